"""A byte-level BPE tokenizer fitted to this corpus, with the from-scratch model's conversation format.

The conversation format (one example = one string; ``tokens`` below are single special tokens):

    <|system|>{system text}\\n<|user|>{user text}\\n<|echo|>{assistant text}<|endoftext|>

Every non-assistant turn ends with a newline; every assistant turn ends with ``<|endoftext|>`` (the EOS id), so a
model prompted with ``...<|echo|>`` learns to stop where Deep Tree Echo stops. The same format is the tokenizer's
``chat_template``, so ``tokenizer.apply_chat_template(messages, add_generation_prompt=True)`` builds prompts and the
local OpenAI-compatible server can serve any checkpoint that carries these files.

Definitions: *byte-level BPE* starts from the 256 byte values (so any UTF-8 text is encodable, no unknown token)
and merges the most frequent adjacent pairs until the vocabulary reaches ``vocab_size``. Special tokens are never
split or merged. This module is the roadmap's "Deep Tree Echo-specific embeddings" TODO, step one: a vocabulary
fitted to this corpus (words such as "reservoir" become one token instead of four).

Explained in notebook 06 (06_month3_progressive).
Run it: ``python -m dte_lib.tokenizer data/seed_corpus.jsonl --vocab 2048 --out outputs/tok``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|echo|>"}
EOS_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = [EOS_TOKEN, *ROLE_TOKENS.values()]  # EOS gets id 0; role tokens 1..3

# Jinja rendering of the format above. `tool` turns (rare) are shown as user turns: the small model has no tools.
CHAT_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'assistant' -%}<|echo|>{{ m['content'] }}<|endoftext|>"
    "{%- elif m['role'] == 'system' -%}<|system|>{{ m['content'] }}{{ '\\n' }}"
    "{%- else -%}<|user|>{{ m['content'] }}{{ '\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|echo|>{%- endif -%}"
)


def render(messages: Sequence[dict[str, Any]], tok: Any = None) -> str:
    """The conversation as one training string (identical to the chat template's output); with ``tok``, as that
    tokenizer's own chat template renders it (the concatenation of :func:`segments`, one template call)."""
    if tok is not None and not is_course(tok):
        return tok.apply_chat_template(_template_messages(messages), tokenize=False)
    return "".join(text for text, _, _ in segments(messages))


def is_course(tok: Any) -> bool:
    """True for a tokenizer with this module's role tokens (the course BPE); False for one that brings its own chat
    template (``train.tokenizer teacher_subset``: the teacher's tokens and ``<|im_start|>`` format)."""
    ids = tok.convert_tokens_to_ids(SPECIAL_TOKENS)  # an unknown token maps to None or to the unk id
    return None not in ids and tok.convert_ids_to_tokens(ids) == SPECIAL_TOKENS  # (get_vocab() builds a dict a call)


def segments(messages: Sequence[dict[str, Any]], tok: Any = None) -> list[tuple[str, bool, float]]:
    """(text, is_assistant_content, weight) pieces whose concatenation is :func:`render`'s string.

    Role tokens are their own pieces, so tokenising piece by piece gives exactly the ids of the whole string
    (special tokens split pre-tokenisation) and tells which ids are assistant text — what loss masks need.
    The assistant's closing ``<|endoftext|>`` counts as assistant text: the model must learn to emit it.

    With a ``tok`` that is not the course BPE (:func:`is_course`), the pieces come from its own chat template instead:
    message ``i``'s piece is what rendering ``messages[:i+1]`` adds to rendering ``messages[:i]``; an assistant
    piece is split into its framing (not trained), its content and the end-of-turn token right after it (trained),
    and whatever follows (not trained).
    """
    if tok is not None and not is_course(tok):
        return _template_segments(tok, messages)
    out: list[tuple[str, bool, float]] = []
    for m in messages:
        role = m["role"] if m["role"] in ROLE_TOKENS else "user"
        content = m.get("content") or ""
        out.append((ROLE_TOKENS[role], False, 0.0))
        if role == "assistant":
            w = float(m.get("weight", 1))
            out.append((content, True, w))
            out.append((EOS_TOKEN, True, w))
        else:
            out.append((content + "\n", False, 0.0))
    return out


def _template_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """Role and content only, for a chat template; ``tool`` and other roles as user turns, as :func:`segments`."""
    return [{"role": m["role"] if m["role"] in ROLE_TOKENS else "user", "content": m.get("content") or ""}
            for m in messages]


def _template_segments(tok: Any, messages: Sequence[dict[str, Any]]) -> list[tuple[str, bool, float]]:
    msgs = _template_messages(messages)
    out: list[tuple[str, bool, float]] = []
    before = ""
    for i, m in enumerate(msgs):
        text = tok.apply_chat_template(msgs[: i + 1], tokenize=False)
        if not text.startswith(before):
            raise ValueError("this tokenizer's chat template does not render a conversation as a prefix of the "
                             "next turn's rendering; the course cannot tell which tokens are the assistant's")
        piece, before = text[len(before):], text
        if m["role"] != "assistant":
            out.append((piece, False, 0.0))
            continue
        w = float(messages[i].get("weight", 1))
        content, eos = m["content"], tok.eos_token or ""
        at = piece.find(content + eos) if content else piece.find(eos)
        if at < 0:
            raise ValueError(f"the chat template does not end an assistant turn with its eos token {eos!r}")
        tail = piece[at + len(content) + len(eos):]
        out += [(piece[:at], False, 0.0), (content, True, w), (eos, True, w)] + ([(tail, False, 0.0)] if tail else [])
    return [s for s in out if s[0]]


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2):
    """Fit a byte-level BPE on ``texts`` and wrap it as a ``PreTrainedTokenizerFast`` with the chat template."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 256 + len(SPECIAL_TOKENS) + 1:
        raise ValueError(f"vocab_size {vocab_size} is below the 256 byte tokens plus {len(SPECIAL_TOKENS)} specials")
    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(list(texts), vocab_size=vocab_size, min_frequency=min_frequency,
                            special_tokens=SPECIAL_TOKENS, show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN,
                                  pad_token=EOS_TOKEN, unk_token=None,
                                  additional_special_tokens=list(ROLE_TOKENS.values()))
    tok.chat_template = CHAT_TEMPLATE
    tok.model_max_length = 1_000_000  # the model's context is the model's business (block size), not the tokenizer's
    return tok


def train_from_examples(examples: Sequence[Any], vocab_size: int):
    """Fit the tokenizer on rendered conversations (``ChatExample`` objects or message lists)."""
    return train_tokenizer((render(getattr(ex, "messages", ex)) for ex in examples), vocab_size)


def save(tok, directory: str | Path) -> Path:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` (with the chat template) and friends."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(directory)
    return directory


def load(directory: str | Path):
    from transformers import AutoTokenizer
    path = Path(directory)
    if not (path / "tokenizer.json").exists():
        raise FileNotFoundError(f"{path}/tokenizer.json not found: train the tokenizer first (notebook 06)")
    return AutoTokenizer.from_pretrained(str(path))


def encode_chat(tok, messages: Sequence[dict[str, Any]], assistant_only: bool = False
                ) -> tuple[list[int], list[int], list[float]]:
    """Token ids, labels and per-token loss weights for one conversation.

    ``labels`` are NOT shifted (Hugging Face causal LMs shift inside the model): ``labels[i] = ids[i]`` where token
    ``i`` is trained on, ``-100`` elsewhere. With ``assistant_only`` only assistant text (and its closing EOS) is
    trained on; a message with ``weight: 0`` (OpenAI's format) is never trained on.
    """
    ids: list[int] = []
    labels: list[int] = []
    weights: list[float] = []
    for text, is_assistant, w in segments(messages, tok):
        piece = tok.convert_tokens_to_ids([text]) if text in SPECIAL_TOKENS else \
            tok(text, add_special_tokens=False)["input_ids"]
        train = (is_assistant and w > 0) if assistant_only else (not is_assistant or w > 0)
        ids += piece
        labels += piece if train else [-100] * len(piece)
        weights += [1.0 if train else 0.0] * len(piece)
    return ids, labels, weights


def main(argv: Sequence[str] | None = None) -> int:
    from . import data
    ap = argparse.ArgumentParser(prog="dte tokenizer", description="Fit the byte-level BPE tokenizer to a corpus.")
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    examples = data.load_corpus(args.paths, strict=True).examples
    tok = train_from_examples(examples, args.vocab)
    save(tok, args.out)
    print(f"{len(tok)} tokens -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
