"""Does quoting the persona's facts in the hint make the teacher state them? (issue 20, item 3)

On the same requests — same ids, prompts, few-shot turns and sampling seeds — the run's teacher answers twice: with
the hint as generation sends it (length hint + the one fact its scenario touches) and with the length hint alone.
Measured on each arm:

- **fact statement**: share of answers that state the fact their request is about (every keyword present) and the
  mean keyword recall (``corpus.fact_statement``); the ungrounded arm is scored against the fact the same request
  would have carried;
- **week-1 checks** on the answers: the quality filter's keep rate, persona rate, distinct-2 per 100 answers and
  self-BLEU (the figures notebook 03 decides on);
- **the teacher on the VAL probes**: coherence (paraphrase agreement × fact recall) and normalised identity
  (``metrics.evaluate`` on ``EvalSet.build(cfg)``, split val), with each probe grounded in its own fact and each
  identity prompt in the fact its topic touches, against the persona prompt alone. No probe question or reference
  enters a hint (tests/test_grounding.py); the hint quotes data/persona.json's statement only.

Run it after notebook 01 of a run (alone: it starts the run's teacher in its own server):
  PYTHONPATH=$PWD python benchmarks/grounding.py --run-dir outputs/runs/long --preset long --n 96
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dte_lib import config, corpus, data, diversity, generate, metrics, prompts, quality  # noqa: E402


def week1_figures(rows, persona, cfg) -> dict:
    ex = [quality.as_example(r) for r in rows]
    kept, _ = quality.filter_examples(ex, persona, quality.FilterCfg.from_preset(cfg))
    answers = [e.response for e in kept]
    ident = corpus.identity_kept(ex, persona)
    return {"keep_rate": round(len(kept) / max(len(ex), 1), 4), "persona_rate": round(ident["persona_rate"], 4),
            "distinct_2_per100": round(diversity.distinct_per(answers, 2), 4) if answers else None,
            "self_bleu": round(diversity.self_bleu(answers), 2) if answers else None,
            "ended_on_their_own": round(sum(r["finish_reason"] == "stop" for r in rows) / max(len(rows), 1), 4)}


def teacher_answerer(client, model: str, system: str, persona: dict, ground: bool, cfg, seed: int,
                     topic_of: dict[str, str], fact_of: dict[str, str]):
    """An answerer (prompts -> answers) over the served teacher; grounded prompts get the hint generation sends."""
    facts = {f["id"]: f for f in persona["facts"]}
    budget = prompts.answer_budget(cfg)

    def one(i: int, p: str) -> str:
        hint = budget.hint
        if ground:
            if p in fact_of and fact_of[p] in facts:  # a probe: its own fact
                extra = prompts.GROUND_TEMPLATE.format(facts=facts[fact_of[p]]["statement"])
            else:  # an identity prompt: the fact its topic touches
                extra, _ = prompts.grounding(persona["facts"], topic_of.get(p, ""), p, 1, seed + i)
            hint = " ".join(x for x in (hint, extra) if x)
        r = client.chat.completions.create(
            model=model, messages=[{"role": "system", "content": f"{system} {hint}".strip()},
                                   {"role": "user", "content": p}],
            max_tokens=cfg.eval.max_new_tokens, temperature=cfg.eval.temperature, top_p=cfg.eval.top_p,
            seed=seed + i)
        return r.choices[0].message.content or ""

    def answer(batch: list[str]) -> list[str]:  # concurrent requests: the server batches them
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(16) as pool:
            return list(pool.map(one, range(len(batch)), batch))
    return answer


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", required=True, help="a run whose notebook 01 has finished")
    ap.add_argument("--preset", default="long")
    ap.add_argument("--n", type=int, default=96, help="generation requests per arm (the plan's first n)")
    ap.add_argument("--skip-probes", action="store_true")
    ap.add_argument("--out", default="benchmarks/grounding.jsonl")
    args = ap.parse_args(argv)
    cfg = config.load(args.preset)
    persona = data.load_persona(cfg.path(cfg.data.persona))
    grounded = prompts.plan_from_config(cfg, args.n)
    plain = prompts.plan_from_config(config.load(args.preset, {"generate.ground_facts": 0}), args.n)
    assert [r.id for r in grounded] == [r.id for r in plain]
    would = {r.id: r.fact_ids for r in grounded}
    rows_out = []
    stamp = {"date": time.strftime("%Y-%m-%d"), "preset": args.preset, "run_dir": args.run_dir, "n": args.n}
    with corpus.teacher_endpoint(args.run_dir) as ep, tempfile.TemporaryDirectory() as tmp:
        engine = generate.EngineConfig.from_preset(cfg, ep.model, local=ep.local)
        engine.top_logprobs = 0
        for name, reqs in (("grounded", grounded), ("plain", plain)):
            t0 = time.perf_counter()
            generate.generate(reqs, Path(tmp) / name, base_url=ep.base_url, api_key=ep.api_key, engine=engine,
                              progress=False)
            rows = generate.read_raw(Path(tmp) / name / generate.RAW)
            row = {**stamp, "what": "requests", "arm": name, "seconds": round(time.perf_counter() - t0, 1),
                   **corpus.fact_statement(rows, persona, would), **week1_figures(rows, persona, cfg)}
            print(json.dumps(row), flush=True)
            rows_out.append(row)
        if not args.skip_probes:
            import openai
            client = openai.OpenAI(base_url=ep.base_url, api_key=ep.api_key)
            ev = metrics.EvalSet.build(cfg)  # VAL
            topic_of = {e.prompt: e.topic or "" for e in ev.examples}
            fact_of = {q: p.get("fact_id") for p in ev.probes for q in p["paraphrases"] if p.get("fact_id")}
            for name, ground in (("grounded", True), ("plain", False)):
                t0 = time.perf_counter()
                res = metrics.evaluate(teacher_answerer(client, ep.model, persona["system_prompt"], persona, ground,
                                                        cfg, cfg.seed, topic_of, fact_of), ev)
                row = {**stamp, "what": "val_probes", "arm": name, "seconds": round(time.perf_counter() - t0, 1),
                       **{k: round(v, 4) for k, v in res.items() if isinstance(v, float)}}
                print(json.dumps(row), flush=True)
                rows_out.append(row)
    with open(args.out, "a") as fh:
        for r in rows_out:
            fh.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
