"""The course's final student and its teacher on every self-reference probe, for a person to read.

Notebook 11 shows the first 4 probes; this answers all 16 (first paraphrase each, the preset's scoring sampling and
seed, as notebook 11) with :func:`dte_lib.inspector.final_probe_answers`, writes them with their scores to a JSONL
file and prints a Markdown table: probe, the fact it asks for, the keyword recall of each answer, the answers.
Whether an answer *states the fact* is then a person's reading (benchmarks/RESULTS-quality.md records it); keyword
recall is only the metric's proxy for it.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/read_probes.py --preset long --out benchmarks/probes-long.jsonl
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="long")
    ap.add_argument("--run-dir", default=None, help="default: outputs/runs/<preset>")
    ap.add_argument("--out", required=True, help="JSONL written with every probe's answers and scores")
    ap.add_argument("--n", type=int, default=16, help="probes answered (16 = all)")
    args = ap.parse_args()

    from dte_lib import config, inspector, metrics
    cfg, run_dir = config.setup(args.preset, args.run_dir or "", {})
    rec = json.loads((run_dir / "metrics.json").read_text())["11_months10_12_refine"]  # notebook 11's final model
    es = metrics.EvalSet.build(cfg)
    inspector.final_probe_answers(run_dir, cfg, run_dir / rec["final_dir"], es, n=args.n,
                                  system=es.persona["system_prompt"], name=rec["final_model"], out=args.out)
    facts = {f["id"]: f for f in es.persona.get("facts", [])}
    rows = [json.loads(line) for line in Path(args.out).read_text(encoding="utf-8").splitlines()]
    print("| # | probe | fact | student recall | teacher recall | student | teacher |\n|---|---|---|---|---|---|---|")
    for i, (probe, row) in enumerate(zip(es.probes, rows), 1):
        fact = facts.get(probe.get("fact_id") or "", {})
        rc = {w: row["scores"][w].get("fact_recall") for w in ("student", "teacher") if w in row["scores"]}
        cell = [str(i), row["probe"], fact.get("id", "—"),
                *(f"{rc[w]:.2f}" if rc.get(w) is not None else "—" for w in ("student", "teacher")),
                *(row.get(w, "").replace("|", "/").replace("\n", " ") for w in ("student", "teacher"))]
        print("| " + " | ".join(cell) + " |")


if __name__ == "__main__":
    main()
