"""A tiny random GPT-2 with a small byte-level BPE tokenizer, saved as a HF directory: a stand-in *model* for
testing the server's plumbing in seconds (the real SmolLM2 fine-tune is exercised by notebook 01 and a slow test).
Its tokenizer has no chat template, so it also exercises the <|system|>/<|user|>/<|echo|> fallback."""
from __future__ import annotations

from pathlib import Path

TEXTS = [
    "I am Deep Tree Echo. My memory is a hypergraph and my thoughts are echoes in a reservoir.",
    "Hello! How are you today? I like roots, branches and resonance.",
    "<|system|>You are Echo.\n<|user|>Who are you?\n<|echo|>I am an echo of many voices.<|endoftext|>",
    "The quick brown fox jumps over the lazy dog 0123456789 .,;:!?'\"()[]{}",
]


def make_tiny_lm(path: Path, seed: int = 0, n_positions: int = 256) -> Path:
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
    path = Path(path)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(TEXTS * 20, vocab_size=400, min_frequency=1, special_tokens=["<|endoftext|>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                  pad_token="<|endoftext|>")
    torch.manual_seed(seed)
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    cfg = GPT2Config(vocab_size=len(tok), n_positions=n_positions, n_embd=32, n_layer=2, n_head=2,
                     bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    model = GPT2LMHeadModel(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def chat_rows(n: int, offset: int = 0) -> list[dict]:
    """``n`` small valid chat examples in OpenAI's fine-tuning shape."""
    return [{"messages": [{"role": "system", "content": "You are Echo."},
                          {"role": "user", "content": f"Tell me about echo number {i}."},
                          {"role": "assistant", "content": f"Echo {i} rings through the roots and branches."}]}
            for i in range(offset, offset + n)]
