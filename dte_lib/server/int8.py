"""Weight-only int8 for the served model: ``dte serve --weights int8`` and ``dte chat --weights int8``.

Why it helps one user at a time: a lone request decodes one token per step, so each step reads every weight once
to multiply it by a single vector — the step is bound by memory traffic, not arithmetic. Storing each weight matrix
as int8 with one scale per output row halves the bytes bf16 reads:

    W[o, i] ≈ s[o] · q[o, i],   s[o] = max_i |W[o, i]| / 127,   q[o, i] = round(W[o, i] / s[o]) ∈ [−127, 127]

and ``y = s ⊙ (x · qᵀ)``: the activations ``x`` stay in the model's dtype (bf16 or fp32), never quantized —
quantizing them is what broke the dynamic int8 tried before (+1.1 to +1.4 nats on SmolLM2-135M,
benchmarks/RESULTS-server.md). Measured with ``benchmarks/bench_quantize.py --variant weight-only``: +0.002 nats on
the VAL answers (base and fine-tuned teacher), a lone decode step ~1.6x cheaper. PyTorch's kernel for it
(``torch._weight_int8pack_mm``, CPU only) works row by row, so with many rows per step it is *slower* than a bf16
matmul (0.7x at 64 rows): the option is for a chat with one person, not for notebook 02's batched generation, and
the server keeps its native weights by default.

Every ``nn.Linear`` without a bias is replaced, the output head included (for a tied head the input embedding keeps
its own bf16 copy). A model whose layers are not ``nn.Linear`` (the course's GPT-2 student uses transformers'
``Conv1D``) keeps them as they are; :func:`quantize_weights` says how many it replaced.
"""
from __future__ import annotations

import torch

CHOICES = ("native", "int8")


def check_device(device_type: str) -> None:
    """A clear error where the kernel cannot run (it is CPU only)."""
    if device_type != "cpu":
        raise ValueError("int8 weights are a CPU path (PyTorch's weight-only int8 kernel); on a GPU keep --weights "
                         "native")


class Int8Linear(torch.nn.Module):
    """A bias-free linear layer holding int8 weights and one scale per output feature."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("qweight", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(linear.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if flat.dtype != self.scale.dtype:
            flat = flat.to(self.scale.dtype)
        return torch._weight_int8pack_mm(flat, self.qweight, self.scale).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights"


def quantize_weights(model: torch.nn.Module) -> int:
    """Replace the model's bias-free ``nn.Linear`` layers (output head included) by :class:`Int8Linear`, in place,
    after the model has its final dtype; returns how many were replaced. CPU only."""
    for p in model.parameters():
        check_device(p.device.type)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    targets = [(name, m) for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and m.bias is None and name]
    for name, m in targets:
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, Int8Linear(m))
    if head is not None and any(m is head for _, m in targets):
        model.config.tie_word_embeddings = False  # the head now has its own (int8) weights
    return len(targets)
