"""Prepare a corpus for OpenAI chat fine-tuning: convert, validate, count tokens, estimate epochs and cost.

The checks follow OpenAI's cookbook notebook "Chat fine-tuning data prep" and keep its error keys, so its
readers recognise them:

==============================  =============================================================================
``data_type``                   a line is not a JSON object
``missing_messages_list``       no ``messages`` list
``message_missing_key``         a message lacks ``role`` or ``content``
``message_unrecognized_key``    a message has a key fine-tuning does not know
``unrecognized_role``           a role other than system / user / assistant / tool / function
``missing_content``             ``content`` is not a non-empty string
``example_missing_assistant_message``  nothing for the model to learn
==============================  =============================================================================

and corrects it where it is out of date or wrong (each correction has a test):

- an assistant message with ``tool_calls`` (and ``content`` null or absent) is valid, so is a ``tool`` message with
  ``tool_call_id``, and a top-level ``tools`` list (``invalid_tools`` if it is not a list of function objects);
- ``weight`` may only be 0 or 1, and only on assistant messages (``invalid_weight``);
- tokens are counted with **o200k_base** (gpt-4o-mini's encoding, offline through ``bpe-openai``; tiktoken would
  download it), and the per-example cap is 65,536 tokens (``too_long`` is a warning: OpenAI truncates);
- at least 10 examples are required (``too_few_examples``), 50+ recommended (a warning);
- an ``{"input", "output"}`` or ``{"prompt", "completion"}`` line is the legacy completion format, reported as
  ``wrong_format_prompt_completion`` with :func:`convert_rows` offered to turn it into chat messages.

Token counting: each message costs its role and content tokens plus 3 framing tokens, a ``name`` one more, and
each example 3 more for the assistant's reply priming (the cookbook's rule; tools are counted as their JSON text,
an estimate). **Billed tokens** = Σ min(65,536, tokens per example) × epochs.

Explained in notebook 01 (``notebooks/01_week1_teacher.ipynb``).
Run it: ``python -m dte_lib.openai_prep data/seed_corpus.jsonl`` prints the checks, tokens and cost.
"""
from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from . import data

MAX_TOKENS_PER_EXAMPLE = 65_536
MIN_EXAMPLES, RECOMMENDED_EXAMPLES = 10, 50
ROLES = {"system", "user", "assistant", "tool", "function"}
MESSAGE_KEYS = {"role", "content", "name", "function_call", "weight", "tool_calls", "tool_call_id", "refusal"}
ERROR_KEYS = ("data_type", "missing_messages_list", "message_missing_key", "message_unrecognized_key",
              "unrecognized_role", "missing_content", "example_missing_assistant_message", "invalid_weight",
              "invalid_tools", "wrong_format_prompt_completion", "too_few_examples")

# USD per 1M tokens. Prices change: pass prices=... (or edit a copy) rather than trusting this table blindly.
PRICES_AS_OF = "2026-11-01"
PRICES: dict[str, dict[str, float]] = {
    "gpt-4o-mini-2024-07-18": {"training": 3.00, "input": 0.30, "output": 1.20, "batch_discount": 0.5},
}
# OpenAI's wind-down of self-serve fine-tuning (see dte_lib.backends for the full explanation).
FINE_TUNING_ENDS = "2027-01-06"
GPT_4O_MINI_SHUTDOWN = "2027-01-14"


@lru_cache(maxsize=1)
def encoding():
    """o200k_base, the encoding of gpt-4o and gpt-4o-mini, from the offline ``bpe-openai`` package."""
    import bpe_openai
    return bpe_openai.get_encoding("o200k_base")


def count_text(text: str) -> int:
    return len(encoding().encode_ordinary(text))


def count_example(row: dict[str, Any]) -> int:
    """Tokens of one chat example as the fine-tune sees it (see the module docstring for the rule)."""
    total = 3  # the reply priming at the end
    for m in row.get("messages", []):
        total += 3 + count_text(str(m.get("role", "")))
        if isinstance(m.get("content"), str):
            total += count_text(m["content"])
        if "name" in m:
            total += 1 + count_text(str(m["name"]))
        for key in ("tool_calls", "function_call"):
            if m.get(key):
                total += count_text(json.dumps(m[key], ensure_ascii=False))
        if m.get("tool_call_id"):
            total += count_text(str(m["tool_call_id"]))
    if row.get("tools"):
        total += count_text(json.dumps(row["tools"], ensure_ascii=False))
    return total


def count_assistant(row: dict[str, Any]) -> int:
    return sum(count_text(m["content"]) for m in row.get("messages", [])
               if m.get("role") == "assistant" and isinstance(m.get("content"), str))


# ---------------------------------------------------------------------------------------------- validation
@dataclass
class PrepReport:
    """What the checks found: error counts by cookbook key, each problem with its line, and warnings."""
    n_examples: int
    errors: Counter = field(default_factory=Counter)
    problems: list[tuple[int, str, str]] = field(default_factory=list)  # (1-based line, key, message)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        if self.ok:
            head = f"{self.n_examples} examples, no errors"
        else:
            head = f"{self.n_examples} examples, errors: " + ", ".join(f"{k}={v}" for k, v in self.errors.items())
        lines = [head] + [f"  line {n}: {k}: {msg}" for n, k, msg in self.problems[:10]]
        if len(self.problems) > 10:
            lines.append(f"  ... and {len(self.problems) - 10} more")
        return "\n".join(lines + [f"  warning: {w}" for w in self.warnings])


def _check_row(row: Any) -> list[tuple[str, str]]:
    if not isinstance(row, dict):
        return [("data_type", f"a {type(row).__name__}, not a JSON object")]
    if "messages" not in row and ({"input", "output"} <= row.keys() or {"prompt", "completion"} <= row.keys()):
        return [("wrong_format_prompt_completion", "a prompt/completion pair: chat models need "
                 '{"messages": [...]}; convert it with openai_prep.convert_rows')]
    msgs = row.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return [("missing_messages_list", "no non-empty 'messages' list")]
    found = []
    tools = row.get("tools")
    if tools is not None and not (isinstance(tools, list) and all(
            isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("function"), dict)
            and t["function"].get("name") for t in tools)):
        found.append(("invalid_tools", "'tools' must be a list of {\"type\": \"function\", \"function\": {...}}"))
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            found.append(("data_type", f"message {i} is not an object"))
            continue
        role = m.get("role")
        has_calls = role == "assistant" and bool(m.get("tool_calls") or m.get("function_call"))
        if "role" not in m or ("content" not in m and not has_calls):
            found.append(("message_missing_key", f"message {i} lacks 'role' or 'content'"))
        unknown = set(m) - MESSAGE_KEYS
        if unknown:
            found.append(("message_unrecognized_key", f"message {i} has unknown key(s) {sorted(unknown)}"))
        if "role" in m and role not in ROLES:
            found.append(("unrecognized_role", f"message {i} has role {role!r}"))
        content = m.get("content")
        if "content" in m and not has_calls and (not isinstance(content, str) or not content.strip()):
            found.append(("missing_content", f"message {i} ({role}) has no text content"))
        if has_calls and content is not None and not isinstance(content, str):
            found.append(("missing_content", f"message {i} content must be a string or null"))
        if "weight" in m and (m["weight"] not in (0, 1) or isinstance(m["weight"], bool) or role != "assistant"):
            found.append(("invalid_weight", f"message {i} weight {m['weight']!r}: only 0 or 1, on assistant turns"))
    if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in msgs):
        found.append(("example_missing_assistant_message", "no assistant message"))
    return found


def validate_rows(rows: Sequence[Any], min_examples: int | None = None) -> PrepReport:
    """Run every check over parsed JSONL rows (a row that failed to parse may be passed as its raw string)."""
    report = PrepReport(n_examples=len(rows))
    for n, row in enumerate(rows, 1):
        for key, msg in _check_row(row):
            report.errors[key] += 1
            report.problems.append((n, key, msg))
    need = MIN_EXAMPLES if min_examples is None else min_examples
    if len(rows) < need:
        report.errors["too_few_examples"] += 1
        report.problems.append((0, "too_few_examples", f"{len(rows)} examples; fine-tuning needs at least {need}"))
    elif min_examples is None and len(rows) < RECOMMENDED_EXAMPLES:
        report.warnings.append(f"{len(rows)} examples: OpenAI recommends at least {RECOMMENDED_EXAMPLES}")
    if report.ok:
        long = sum(count_example(r) > MAX_TOKENS_PER_EXAMPLE for r in rows)
        if long:
            report.warnings.append(f"{long} example(s) over {MAX_TOKENS_PER_EXAMPLE:,} tokens will be truncated")
    return report


def validate_file(path: str | Path) -> PrepReport:
    rows: list[Any] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    rows.append(line.rstrip("\n"))
    return validate_rows(rows)


# ---------------------------------------------------------------------------------------------- conversion
def to_chat_row(ex: data.ChatExample) -> dict[str, Any]:
    """An example in the fine-tuning shape: only ``messages`` (and ``tools``); ids and topics stay behind."""
    row: dict[str, Any] = {"messages": [{k: v for k, v in m.items() if k in MESSAGE_KEYS} for m in ex.messages]}
    if ex.meta.get("tools"):
        row["tools"] = ex.meta["tools"]
    return row


def convert_rows(rows: Sequence[dict[str, Any]], system: str | None = None) -> list[dict[str, Any]]:
    """Turn ``{"input","output"}`` / ``{"prompt","completion"}`` rows into chat rows (an optional system prompt)."""
    out = []
    for r in rows:
        if "messages" in r:
            out.append(r)
            continue
        ask, answer = ("input", "output") if "input" in r else ("prompt", "completion")
        msgs = [{"role": "system", "content": r.get("system") or system}] if (r.get("system") or system) else []
        out.append({"messages": msgs + [{"role": "user", "content": r[ask]},
                                        {"role": "assistant", "content": r[answer]}]})
    return out


def split_80_20(examples: Sequence[data.ChatExample], test_fraction: float = 0.1
                ) -> dict[str, list[data.ChatExample]]:
    """The roadmap's 80/20 train/validation split, by a hash of each id (stable when the file grows).

    Examples in ``dte_lib.data``'s *test* split (``test_fraction``) are held out first — nobody trains on them,
    the teacher included — and 80/20 applies to the rest.
    """
    out: dict[str, list[data.ChatExample]] = {"train": [], "validation": [], "test": []}
    for ex in examples:
        if data.split_of(ex.id, 0.0, test_fraction) == "test":
            out["test"].append(ex)
        else:
            out["validation" if data.split_of("ft80/20:" + ex.id, 0.2, 0.0) == "val" else "train"].append(ex)
    return out


# ---------------------------------------------------------------------------------------------- epochs, cost
def auto_epochs(n_examples: int, target: int = 3, min_total: int = 100, max_total: int = 25_000) -> int:
    """``n_epochs: "auto"`` as OpenAI describes it: aim for 3 epochs, but see at least ~100 and at most ~25,000
    examples in total — small sets get more epochs (capped at 25), huge ones fewer (at least 1)."""
    if n_examples <= 0:
        return target
    if n_examples * target < min_total:
        return min(25, -(-min_total // n_examples))
    if n_examples * target > max_total:
        return max(1, max_total // n_examples)
    return target


def estimate(rows: Sequence[dict[str, Any]], *, epochs: int | None = None, model: str = "gpt-4o-mini-2024-07-18",
             prices: dict[str, dict[str, float]] | None = None, expected_output_tokens: int = 0,
             expected_requests: int = 0, prompt_tokens_per_request: int = 0) -> dict[str, Any]:
    """Tokens, epochs, billed tokens and USD for a fine-tune, plus the inference cost of using the result.

    ``expected_requests`` × (``prompt_tokens_per_request`` in, ``expected_output_tokens`` out) prices generation
    with the fine-tuned model, at list price and through the Batch API (half price).
    """
    table = {**PRICES, **(prices or {})}
    if model not in table:
        raise KeyError(f"no price for {model!r}: pass prices={{{model!r}: {{'training': ..., 'input': ..., "
                       "'output': ...}}}")
    p = table[model]
    counts = [count_example(r) for r in rows]
    epochs = epochs or auto_epochs(len(rows))
    billed_per_epoch = sum(min(MAX_TOKENS_PER_EXAMPLE, c) for c in counts)
    billed = billed_per_epoch * epochs
    infer_in = expected_requests * prompt_tokens_per_request
    infer_out = expected_requests * expected_output_tokens
    inference = (infer_in * p["input"] + infer_out * p["output"]) / 1e6
    return {"model": model, "prices_as_of": PRICES_AS_OF, "examples": len(rows), "epochs": epochs,
            "tokens_total": sum(counts), "tokens_max": max(counts, default=0),
            "tokens_median": sorted(counts)[len(counts) // 2] if counts else 0,
            "over_cap": sum(c > MAX_TOKENS_PER_EXAMPLE for c in counts),
            "billed_tokens": billed, "training_usd": billed * p["training"] / 1e6,
            "inference_usd": inference, "inference_batch_usd": inference * p.get("batch_discount", 0.5)}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print("usage: python -m dte_lib.openai_prep FILE.jsonl", file=sys.stderr)
        return 2
    report = validate_file(argv[0])
    print(report.summary())
    if report.ok:
        res = data.load_corpus(argv[0])
        rows = [to_chat_row(ex) for ex in res.examples]
        for k, v in estimate(rows).items():
            print(f"  {k:22s} {v:,.4f}" if isinstance(v, float) else f"  {k:22s} {v}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
