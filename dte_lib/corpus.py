"""The corpus pipeline of notebooks 02–04 in a few calls: teacher endpoint → raw → filter → dedup → clean, the
week-1 evaluation and its decision.

Files under ``<run>/corpus/`` (later phases read them; the names are a contract):

- ``raw.jsonl`` — every generated answer (request id, prompt-bank id, topic, task, style, messages, finish_reason,
  usage), ``failures.jsonl``, ``ledger.json`` — written by :mod:`dte_lib.generate`;
- ``kept.jsonl`` / ``dropped.jsonl`` — the quality filter's split, each dropped row with ``drop_reason``;
- ``clean.jsonl`` — kept minus near-duplicates, in OpenAI chat format (``data.write_jsonl`` of ChatExamples, with
  ``topic`` and ``"origin": "synthetic"``): what the trainer (notebook 06) and self-generation (08) consume;
- ``review.jsonl`` — the manual review's decisions (:mod:`dte_lib.review`).

Explained in notebooks 02, 03 and 04. Run it: ``python -m dte_lib.corpus outputs/runs/demo`` rebuilds the filtered
files of a run and prints the counts.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from . import data, diversity, quality


def corpus_dir(run_dir: str | os.PathLike) -> Path:
    d = Path(run_dir) / "corpus"
    d.mkdir(parents=True, exist_ok=True)
    return d


# ---------------------------------------------------------------------------------------------- teacher
@dataclass
class Endpoint:
    """Where the teacher answers: an OpenAI-compatible base URL, a key, a model name."""
    base_url: str | None  # None = api.openai.com
    api_key: str
    model: str
    local: bool  # cost 0 in the ledger
    source: str  # a sentence saying which teacher this is and why


@contextlib.contextmanager
def teacher_endpoint(run_dir: str | os.PathLike) -> Iterator[Endpoint]:
    """Start (local) or point at (OpenAI / compatible) the teacher notebook 01 chose; stop it on exit.

    - ``backend == "local"``: launch ``dte_lib.server`` on ``info["path"]`` (the merged fine-tuned model) as a
      subprocess, stopped by its pid when the block ends. Without a model_info.json (notebook 01 not run in this run
      directory) the base SmolLM2-135M-Instruct is served instead, and ``source`` says so.
    - ``"openai"``: api.openai.com with ``OPENAI_API_KEY`` from the environment.
    - ``"compatible"``: ``info["base_url"]`` (or ``$DTE_BASE_URL``) with ``$DTE_API_KEY`` (or ``OPENAI_API_KEY``).
    """
    from . import teacher
    info = teacher.load_model_info(run_dir, missing_ok=True)
    backend = (info or {}).get("backend", "local")
    if backend == "local":
        from . import server
        if info and info.get("path"):
            path, name = info["path"], info.get("model") or "teacher"
            source = f"local fine-tuned teacher {name} from notebook 01 ({path})"
        else:
            path, name = teacher.base_model_dir(), "smollm2-135m-instruct-base"
            source = ("base SmolLM2-135M-Instruct (no fine-tuned teacher: notebook 01's model_info.json is missing "
                      "from this run directory)")
        handle = server.launch({name: path})
        try:
            yield Endpoint(handle.base_url, handle.api_key, name, True, source)
        finally:
            handle.stop()
    elif backend == "openai":
        from . import backends
        backends.check("openai")  # BackendUnavailable (a RuntimeError) that explains what to set, and the dates
        yield Endpoint(None, os.environ["OPENAI_API_KEY"], info["model"], False, f"OpenAI model {info['model']}")
    elif backend == "compatible":
        url = info.get("base_url") or os.environ.get("DTE_BASE_URL")
        if not url:
            from . import backends
            backends.check("compatible")
        key = os.environ.get("DTE_API_KEY") or os.environ.get("OPENAI_API_KEY") or "not-needed"
        yield Endpoint(url, key, info["model"], False, f"compatible server {url}, model {info['model']}")
    else:
        raise ValueError(f"model_info.json: unknown backend {backend!r} (local, openai or compatible)")


# ---------------------------------------------------------------------------------------------- filter + dedup
def load_raw(run_dir: str | os.PathLike) -> list[data.ChatExample]:
    from .generate import RAW, read_raw
    return [quality.as_example(r) for r in read_raw(corpus_dir(run_dir) / RAW)]


def build_clean(run_dir: str | os.PathLike, cfg: Any, persona: dict[str, Any],
                moderation_client: Any = None) -> dict[str, Any]:
    """raw.jsonl → kept.jsonl + dropped.jsonl (with reasons) → clean.jsonl (one per near-duplicate cluster).

    Returns counts, the per-reason table and the duplicate clusters' sizes.
    """
    d = corpus_dir(run_dir)
    raw = load_raw(run_dir)
    kept, dropped = quality.filter_examples(raw, persona, quality.FilterCfg.from_preset(cfg), moderation_client)
    clean, dups = diversity.dedup(kept, cfg.generate.dedup_jaccard)
    data.write_jsonl(d / "kept.jsonl", kept)
    data.write_jsonl(d / "dropped.jsonl", dropped)
    data.write_jsonl(d / "clean.jsonl", [training_example(ex) for ex in clean])
    return {"raw": len(raw), "kept": len(kept), "dropped": len(dropped), "duplicates_removed": len(dups),
            "clean": len(clean), "keep_rate": len(kept) / len(raw) if raw else 0.0,
            "trimmed": sum("trimmed_chars" in ex.meta for ex in kept),
            "drop_reasons": quality.reason_counts(dropped),
            "clean_examples": clean, "kept_examples": kept, "dropped_examples": dropped}


def training_example(ex: data.ChatExample) -> data.ChatExample:
    """Just what a trainer needs: the chat messages, id, topic and origin (no usage, seeds or filter notes)."""
    meta = {"topic": ex.topic, "origin": "synthetic", "bank_id": ex.meta.get("bank_id")}
    return data.ChatExample(messages=[{"role": m["role"], "content": m["content"]} for m in ex.messages],
                            id=ex.id, meta=meta)


# ---------------------------------------------------------------------------------------------- week-1 decision
def identity_kept(examples: list[data.ChatExample], persona: dict[str, Any]) -> dict[str, float]:
    """Two cheap identity signals on the answers: share that use a persona concept or the first-person voice
    (what the filter's persona_drift check tests), and share that name a persona concept specifically."""
    if not examples:
        return {"persona_rate": 0.0, "concept_rate": 0.0}
    concept = [bool(quality.persona_concepts(ex.response, persona)) for ex in examples]
    drift = [any(h[0] == "persona_drift" for h in quality.check(ex.response, persona=persona)) for ex in examples]
    return {"persona_rate": 1 - sum(drift) / len(examples), "concept_rate": sum(concept) / len(examples)}


def fact_statement(rows: Sequence[dict[str, Any] | data.ChatExample], persona: dict[str, Any],
                   fact_ids: dict[str, list[str]] | None = None) -> dict[str, float]:
    """How often answers state the persona facts their request was grounded in (``fact_ids`` of each raw row, or
    ``fact_ids[row id]`` to score answers generated *without* grounding against the facts the same request would have
    carried). A fact is stated when every one of its keywords is in the answer (``metrics.keyword_recall`` = 1, the
    rule coherence's fact recall uses). Returns the answers scored, the share stating their fact(s) and the mean
    keyword recall."""
    from .metrics import keyword_recall
    facts = {f["id"]: f for f in persona.get("facts", [])}
    recalls = []
    for r in rows:
        r = quality.as_example(r)  # a raw.jsonl row or a ChatExample (its other keys are its meta)
        ids = fact_ids.get(r.id, []) if fact_ids is not None else (r.meta.get("fact_ids") or [])
        answer = r.response
        recalls += [keyword_recall(answer, facts[i]["keywords"]) for i in ids if i in facts]
    if not recalls:
        return {"grounded_answers": 0, "fact_stated_rate": 0.0, "fact_recall": 0.0}
    return {"grounded_answers": len(recalls), "fact_stated_rate": sum(x == 1.0 for x in recalls) / len(recalls),
            "fact_recall": sum(recalls) / len(recalls)}


def week1_decision(figures: dict[str, float], cfg: Any) -> dict[str, Any]:
    """Compare the week-1 figures with the preset's stated thresholds: "proceed" only if every check passes,
    otherwise "refine prompts and regenerate" with the failing checks named."""
    g = cfg.generate
    checks = {
        "keep_rate": (figures["keep_rate"], ">=", g.min_keep_rate),
        "persona_rate": (figures["persona_rate"], ">=", g.min_persona_rate),
        "distinct_2": (figures["distinct_2"], ">=", g.min_distinct2),
        "self_bleu": (figures["self_bleu"], "<=", g.max_self_bleu),
        "near_dup_share": (figures["near_dup_share"], "<=", g.max_near_dup_share),
    }
    rows, failing = [], []
    for name, (value, op, limit) in checks.items():
        ok = value >= limit if op == ">=" else value <= limit
        rows.append({"check": name, "value": round(float(value), 4), "needs": f"{op} {limit}", "pass": ok})
        if not ok:
            failing.append(name)
    return {"decision": "proceed" if not failing else "refine prompts and regenerate", "failing": failing,
            "checks": rows}


if __name__ == "__main__":
    from . import config
    run = Path(sys.argv[1])
    cfg = config.load(run.name if run.name in config.PRESET_NAMES else None)
    out = build_clean(run, cfg, data.load_persona(cfg.path(cfg.data.persona)))
    print(json.dumps({k: v for k, v in out.items() if not k.endswith("_examples")}, indent=2))
