"""Tiny real parts for the evaluation/identity tests: a byte-level BPE tokenizer with the course's role tokens and a
small GPT-2, trained for a few seconds on the seed corpus when a test needs a 'good' model."""
from __future__ import annotations

from functools import lru_cache

from dte_lib import config, data

SPECIALS = ["<|endoftext|>", "<|system|>", "<|user|>", "<|echo|>", "<|pad|>"]


@lru_cache(maxsize=1)
def corpus_split():
    cfg = config.load("ci")
    ex = data.load_corpus(cfg.path(cfg.data.corpus)).examples
    return data.split(ex, cfg.data.val_fraction, cfg.data.test_fraction)


def transcript(ex) -> str:
    parts = []
    for m in ex.messages:
        tag = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|echo|>"}[m["role"]]
        parts.append(f"{tag}{m['content']}\n" if m["role"] != "assistant" else f"{tag}{m['content']}")
    return "".join(parts) + "<|endoftext|>"


@lru_cache(maxsize=1)
def tokenizer(vocab_size: int = 400):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([transcript(e) for e in corpus_split()["train"]], vocab_size=vocab_size,
                            special_tokens=SPECIALS, show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|pad|>",
                                   additional_special_tokens=SPECIALS[1:4])


def model(seed: int = 0, n_layer: int = 1, n_embd: int = 48, n_positions: int = 128):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    tok = tokenizer()
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=4,
                     bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return GPT2LMHeadModel(cfg)


@lru_cache(maxsize=1)
def trained_model(steps: int = 60):
    """A 1-layer GPT-2 trained ~10 s on the train split's transcripts (random windows of n_positions tokens)."""
    import torch
    tok = tokenizer()
    m = model(seed=1)
    ids = [i for e in corpus_split()["train"] for i in tok(transcript(e))["input_ids"]]
    ids = torch.tensor(ids)
    ctx = m.config.n_positions
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    m.train()
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - ctx, (8,), generator=g)
        batch = torch.stack([ids[s:s + ctx] for s in starts])
        loss = m(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    return m
