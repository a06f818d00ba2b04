"""What a run of each preset should show, and whether this one did — the one place the course's expectations live.

Two things every notebook prints, computed from the preset it runs:

- :func:`story` (its first cell): the roadmap's phase against what this run does in it — "roadmap: layers 5–8 ·
  this run: depth 2 throughout, because …" — so the text never promises a model the preset does not build.
- :func:`check` (before its exercises): each key figure it recorded in ``metrics.json`` beside this preset's range,
  with ✓ or ✗ — or "no measured range" where no run of that preset has measured it yet.

``EXPECT`` holds the ranges: notebook → figure → preset → ``(low, high)``. ``ci`` ranges are checked by the test
suite against a ci course run (``tests/test_exercises.py`` reads this table), so a range that drifts fails a test
instead of misleading a learner. ``demo`` and ``long`` ranges come from measured runs only — ``SOURCES`` names each
run: ``demo``'s from three seeds of the same code (``dte course run --seed``), widened a little around them;
``long``'s from one or two runs (hours each); a figure no run has measured has no range.

Run it: ``python -m dte_lib.expect outputs/runs/demo`` checks every notebook of a run against its preset's ranges.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from . import config, runlog

ALL = ("ci", "demo", "long")
Range = tuple[float, float]

# The runs the demo/long ranges come from (every range below widens the values these runs measured).
SOURCES = {
    "demo": "three demo runs of 2026-12-07, seeds 1234 (the default), 1 and 2 (`dte course run --seed N`, 2-core AMD "
            "EPYC); figures the 2026-12-07 changes did not move also from the demo runs of 2026-12-03, "
            "benchmarks/RESULTS-quality.md and RESULTS-identity.md",
    "long": "long runs of 2026-12-02/03 (benchmarks/RESULTS-long.md, RESULTS-quality.md: 4,000 requests; the "
            "preset now asks 10,800, so counts that scale with requests have no range yet) and, for the student, "
            "the distilled one of 2026-12-07 (perplexities over the teacher-subset tokens: no range carries over "
            "from the course BPE; bits per byte do)",
}


def _same(lo: float, hi: float) -> dict[str, Range]:
    """A figure that does not depend on the preset (the shipped seed corpus, arithmetic, exact equalities)."""
    return {p: (lo, hi) for p in ALL}


EXPECT: dict[str, dict[str, dict[str, Range]]] = {
    "00_setup_and_tour": {  # every preset reads the same shipped corpus: 268 examples, split 203 / 34 / 31
        "examples": _same(250, 300), "topics": _same(13, 13), "rejected": _same(0, 0),
        "exact_duplicate_groups": _same(0, 0), "near_duplicate_pairs": _same(0, 0), "split.test": _same(25, 40),
    },
    "01_week1_teacher": {
        "val_loss_base": {"ci": (3.3, 4.8), "demo": (3.8, 4.4), "long": (3.5, 4.1)},  # demo 4.105, long 3.805
        "val_loss_finetuned": {"demo": (3.4, 4.0), "long": (3.0, 3.5)},  # demo 3.764, long 3.229 / 3.230
        "val_loss_improved": _same(1, 1),
        "lora_share": _same(0.001, 0.1),  # 0.48% on 4 blocks (ci, demo), 3.6% on all 30 (long)
    },
    "02_week1_generate": {
        "failed": _same(0, 0), "rerun_sent": _same(0, 0),
        "generated": {"ci": (2, 200), "demo": (20, 24)},  # demo 24 of 24
        # demo 0.96 / 0.83 / 0.75 over 3 seeds (8% before the teacher was trained on answers that end); long 93.2% /
        # 93.3% at max_tokens 279 (2026-12-03), 95.1% on the first 433 answers of 2026-12-07
        "stop_share": {"demo": (0.65, 1.0), "long": (0.85, 1.0)},
    },
    "03_week1_evaluate": {
        "seed_false_drop_rate": _same(0.0, 0.08),  # 8 of 268 at every preset
        "keep_rate": {"demo": (0.45, 0.95), "long": (0.9, 1.0)},  # demo 0.58 / 0.83 / 0.79; long 0.958, 0.957
        "persona_rate": {"demo": (0.55, 1.0), "long": (0.9, 1.0)},  # demo 0.67 / 0.92 / 0.88; long 0.968, 0.965
        "distinct_2": {"ci": (0.5, 1.0), "demo": (0.7, 1.0), "long": (0.5, 0.75)},  # demo 0.85; long 0.62 (per 100)
        "self_bleu": {"ci": (0.0, 40.0), "demo": (0.0, 15.0), "long": (12.0, 25.0)},  # demo 4.6; long 18.1, 17.7
    },
    "04_month1_expand": {
        "failed": _same(0, 0),
        "reused_from_week1": {"ci": (1, 200), "demo": (20, 24)},  # demo reuses week 1's 24
        "near_dup_clusters": {"ci": (0, 2), "demo": (0, 2)},  # demo 0
        "clean": {"demo": (18, 36)},  # demo 24 / 33 / 31 of 40
    },
    "05_month2_infrastructure": {  # long measures the same shapes as demo (its scale settings are demo's)
        "activation_measured_over_formula": _same(0.8, 1.6),  # demo 0.99; 1.01–1.41 on earlier shapes
        "peak_rss_over_formula": _same(0.8, 6.0),  # demo 1.52
        "params_4_layers": _same(67_736_832, 67_736_832),  # arithmetic
        "disagreements": _same(12, 20),  # 16 at every preset
    },
    "06_month3_progressive": {
        "chars_per_token": {"ci": (1.8, 4.5), "demo": (3.8, 4.0)},  # demo 3.90 / 3.91 / 3.90
        "padding_tokens": _same(0, 0),
        "share_kept_if_truncated": {"ci": (0.02, 0.6), "demo": (0.3, 0.45)},  # demo 0.38
        "block_by_hand_max_abs_diff": _same(0.0, 1e-5),
        "hand_step_loss_drop": {"ci": (0.001, 3.0), "demo": (0.4, 0.52)},  # demo 0.462 / 0.454 / 0.467
        "short_run_val_loss.-1": {"ci": (2.5, 7.0), "demo": (5.6, 6.6)},  # demo 6.12
        "growth_val_delta.zero_init": _same(0.0, 0.0), "zero_init_preserves_function": _same(1, 1),
    },
    "07_month4_layers_1_4": {
        "final_bits_per_byte": {"ci": (1.2, 4.0), "demo": (1.25, 1.5)},  # demo 1.37
        # demo 2.03; long 1.701
        "final_answer_bits_per_byte": {"ci": (1.5, 4.5), "demo": (1.9, 2.2), "long": (1.6, 1.8)},
        "final_answer_perplexity": {"demo": (125, 160), "long": (170, 230)},  # demo 140; long 197.6 (val, subset)
    },
    "08_month5_selfgen": {
        "selfgen_generated": {"ci": (1, 500), "demo": (40, 48)},  # demo 48
        "selfgen_passed_filter": {"demo": (30, 48)},  # demo kept 38 (2026-12-03), 45 (2026-12-07)
        "grown_bits_per_byte": {"ci": (1.2, 4.5), "demo": (2.0, 2.2), "long": (1.6, 1.8)},  # demo 2.08; long 1.704
        "grown_perplexity": {"demo": (145, 172), "long": (170, 230)},  # demo 159; long 197.2 (val, subset)
        "grown_identity_normalised": {"demo": (-0.2, 0.25)},  # demo 0.05 / −0.09 / 0.04 (3 seeds); 0.13 (12-03)
        "grown_copy_rate": _same(0.0, 0.05),
    },
    "09_month6_identity_metrics": {
        "identity_floor": {"ci": (0.2, 0.4), "demo": (0.14, 0.2)},  # demo 0.17
        "identity_ceiling": {"ci": (0.35, 0.55), "demo": (0.4, 0.48)},  # demo 0.44
        "calib_second_halves_identity": {"ci": (0.6, 0.9), "demo": (0.68, 0.8)},  # demo 0.74
        "calib_random_identity": {"ci": (-0.1, 0.25), "demo": (0.0, 0.15)},  # demo 0.09
        "month6_bits_per_byte": {"ci": (1.2, 4.5), "demo": (1.95, 2.2), "long": (1.6, 1.8)},  # demo 2.09; long 1.712
        "month6_perplexity": {"demo": (145, 172), "long": (170, 235)},  # demo 158.4; long 202.7 (val, subset)
        "month6_meets_perplexity": _same(0, 0),  # roadmap < 20: no CPU preset comes near
    },
    "10_months7_9_identity": {
        "plain_perplexity": {"ci": (20, 2000), "demo": (145, 172), "long": (180, 235)},  # demo 158; long 206.6
        "mech_perplexity": {"ci": (20, 2000), "demo": (145, 175), "long": (185, 245)},  # demo 159; long 215.3
        "ablation_runs": {"ci": (2, 50), "demo": (6, 6), "long": (12, 12)},  # demo: six arms, one seed; long: two seeds
    },
    "11_months10_12_refine": {
        "one_batch_identity_raw": {"ci": (0.5, 1.5), "demo": (0.9, 1.1)},  # demo 0.989 / 0.977 / 1.011
        "final_perplexity": {"demo": (125, 165), "long": (160, 215)},  # demo 137; long 185.7 (test, subset tokens)
        "final_bits_per_byte": {"ci": (1.2, 4.5), "demo": (1.85, 2.1), "long": (1.6, 1.8)},  # demo 1.95; long 1.664
        # demo 0.05 / 0.06 / 0.01 (3 seeds), 0.14 (2026-12-03); long 0.32 ± 0.15 (2026-12-07), 0.08 before
        "final_identity_normalised": {"demo": (-0.1, 0.3), "long": (-0.05, 0.5)},
        "final_copy_rate": _same(0.0, 0.05), "final_meets_perplexity": _same(0, 0),
        "teacher_bits_per_byte": {"ci": (0.8, 1.8), "demo": (1.1, 1.35), "long": (0.95, 1.2)},  # demo 1.22; long 1.072
        # f16 GGUF weights read back: demo 1e-4 to 1e-3; long 0.012 (2026-12-07, the distilled 3.07M student)
        "export_logit_max_diff": {"ci": (0.0, 0.01), "demo": (0.0, 0.01), "long": (0.0, 0.03)},
    },
    "12_month13_scaling": {  # arithmetic at every preset; the torchrun check measured at ci, demo and long
        "params_1b": _same(1_017_302_272, 1_017_302_272), "width_for_1b_at_24_layers": _same(1792, 1792),
        "mem_gib_1b_ddp_b1": _same(19.0, 22.0), "mem_gib_1b_fsdp8_b1": _same(6.0, 8.5),
        "max_loss_rel_diff": _same(0.0, 1e-5),  # demo 1.4e-7, long 1.3e-7
        "max_weight_abs_diff": _same(0.0, 1e-3),  # demo 4.5e-6, long 8.1e-6
    },
}


def lookup(record: dict[str, Any], key: str) -> Any:
    """``a.b.-1`` → record["a"]["b"][-1] (booleans count as 0/1); KeyError / IndexError name the missing part."""
    value: Any = record
    for part in key.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def results(run_dir: str | Path, preset: str, notebook: str) -> list[dict[str, Any]]:
    """One row per expected figure of ``notebook``: key, value (None if not recorded), range (None if this preset
    has none) and ok (None without a range or a value)."""
    record = runlog.load(run_dir).get(notebook, {})
    rows = []
    for key, ranges in EXPECT.get(notebook, {}).items():
        try:
            value = lookup(record, key)
        except (KeyError, IndexError, ValueError, TypeError):
            value = None
        rng = ranges.get(preset)
        ok = None if rng is None or value is None else rng[0] <= float(value) <= rng[1]
        rows.append({"key": key, "value": value, "range": rng, "ok": ok})
    return rows


def _fmt(x: Any) -> str:
    if isinstance(x, bool):
        return str(int(x))
    if isinstance(x, float):
        return f"{x:.3g}" if abs(x) < 1e-3 and x != 0 else f"{x:,.3f}".rstrip("0").rstrip(".")
    return f"{x:,}" if isinstance(x, int) else str(x)


def check(run_dir: str | Path, cfg: Any, notebook: str) -> None:
    """Print each figure ``notebook`` recorded beside this preset's range, with ✓ or ✗ (what a notebook's last code
    cell calls). Returns None: a cell ending in it shows the lines only."""
    rows = results(run_dir, cfg.name, notebook)
    ranged = [r for r in rows if r["ok"] is not None]
    print(f"this run ({cfg.name}) against the ranges measured runs of each preset landed in — "
          f"{sum(r['ok'] for r in ranged)} of {len(ranged)} in range:")
    for r in rows:
        value = "not recorded" if r["value"] is None else _fmt(r["value"])
        if r["range"] is None:
            print(f"  ·  {r['key']:34s} {value:>12s}   no measured {cfg.name} range yet")
        else:
            lo, hi = r["range"]
            mark = "—" if r["ok"] is None else "✓" if r["ok"] else "✗"
            print(f"  {mark}  {r['key']:34s} {value:>12s}   {cfg.name} range [{_fmt(lo)}, {_fmt(hi)}]")
    if cfg.name in SOURCES:
        print(f"  ({cfg.name} ranges from {SOURCES[cfg.name]})")


def _depths(text: Any) -> list[int]:
    return config.as_list(text)


def story(cfg: Any, notebook: str) -> None:
    """Print the roadmap's phase for ``notebook`` against what this preset's run does in it (its first cell)."""
    print(phase_story(cfg, notebook).replace(" · this run (", "\nthis run ("))


def phase_story(cfg: Any, notebook: str) -> str:
    """The roadmap's phase for ``notebook`` and, computed from ``cfg``, what this run does in it."""
    t, g, e, s, name = cfg.train, cfg.generate, cfg.eval, cfg.scale, cfg.name
    grown = _depths(t.depths)
    depth = grown[-1]
    d08, d09 = _depths(e.depths_08), _depths(e.depths_09)
    why = {"demo": "the scaling study (benchmarks/RESULTS-scaling.md) found that on this corpus and budget 1 layer "
                   "beats 2 and 2 beats 4",
           "long": "a distilled student sized on the 10,377-example corpus (benchmarks/RESULTS-scaling.md): width "
                   "128, 1 → 2 layers",
           "ci": "ci is a smoke test with tiny sizes"}.get(name, "the preset's schedule")

    def continues(target: list[int], roadmap: str, steps: int, what: str) -> str:
        if max(target) > depth:
            return (f"roadmap: {roadmap} · this run ({name}): grows the model to {', '.join(map(str, target))} "
                    f"layers, {steps} steps per stage; {what}")
        return (f"roadmap: {roadmap} · this run ({name}): depth stays at {depth} (notebook 07's model) — {why}; "
                f"this phase adds {steps} steps per stage at that depth and {what}")

    stories = {
        "00_setup_and_tour": f"roadmap: the whole 18 months, one phase per notebook · this run ({name}): teacher "
                             f"fine-tuned {cfg.teacher.epochs} epoch(s), {g.n_examples:,} week-1 requests and "
                             f"{g.n_month1:,} by month 1, a GPT-2 {t.d_model} wide grown {' → '.join(map(str, grown))} "
                             f"layers at context {t.block_size}",
        "01_week1_teacher": f"roadmap: fine-tune gpt-4o-mini on the seed conversations · this run ({name}): "
                            f"{cfg.teacher.backend} backend, {cfg.teacher.base_model} + LoRA, {cfg.teacher.epochs} "
                            f"epoch(s) at {cfg.teacher.max_length} tokens"
                            + (f", at most {cfg.teacher.max_steps} steps" if cfg.teacher.max_steps else ""),
        "02_week1_generate": f"roadmap: generate the synthetic corpus (days 3–5) · this run ({name}): "
                             f"{g.n_examples:,} requests, answers capped at "
                             + (f"{g.max_tokens} tokens" if g.max_tokens else
                                f"the seed answers' p{g.answer_percentile:g}"
                                + (f", at most {g.max_tokens_cap} tokens" if g.max_tokens_cap else "")),
        "03_week1_evaluate": f"roadmap: evaluate week 1 and decide: proceed or regenerate · this run ({name}): the "
                             f"same checks on its {g.n_examples:,} answers",
        "04_month1_expand": f"roadmap: expand to 100,000 examples (month 1) · this run ({name}): "
                            f"{g.n_month1:,} in all ({max(g.n_month1 - g.n_examples, 0):,} new)",
        "05_month2_infrastructure": f"roadmap: choose and budget the hardware (month 2) · this run ({name}): measures "
                                    "this machine and recomputes the roadmap's tables",
        "06_month3_progressive": f"roadmap: progressive-training foundations (month 3) · this run ({name}): "
                                 + (f"tokenizer of {t.vocab_size:,} tokens" if t.tokenizer == "fitted" else
                                    "the teacher's tokens this corpus uses (train.tokenizer teacher_subset)")
                                 + f", context {t.block_size}, a short run grown "
                                 f"{' → '.join(map(str, _depths(t.short_depths)))} layers",
        "07_month4_layers_1_4": f"roadmap: grow layers 1–4 (month 4) · this run ({name}): grows "
                                f"{' → '.join(map(str, grown))} layers at width {t.d_model}, "
                                f"{t.tokens_per_stage:,} tokens per stage — {why}",
        "08_month5_selfgen": continues(d08, "layers 5–8 and self-generation (month 5)", e.stage_steps,
                                       f"retrains on {e.selfgen_examples} self-generated answers "
                                       f"({e.selfgen_steps} steps)"),
        "09_month6_identity_metrics": continues(d09, "layers 9–12 and the identity metrics (month 6)", e.stage_steps,
                                                "scores it on the four success metrics"),
        "10_months7_9_identity": f"roadmap: identity mechanisms (months 7–9) · this run ({name}): the "
                                 f"{max(d09 + [depth])}-layer model continued {e.mechanism_steps} steps with and "
                                 f"without the mechanisms, and an ablation of {len(config.as_list(e.ablation_arms, str))} "
                                 f"arms × {e.ablation_seeds} seed(s) at {e.ablation_depth} layer(s)",
        "11_months10_12_refine": f"roadmap: multi-task refinement (months 10–12) · this run ({name}): "
                                 f"{e.refine_steps} steps of lm + {e.identity_weight:g}·identity + "
                                 f"{e.coherence_weight:g}·coherence against {e.refine_steps} of LM only, at the same "
                                 f"depth; kept only beyond the noise band (±{e.identity_noise:g})",
        "12_month13_scaling": f"roadmap: scale to 1B+ across GPUs (month 13) · this run ({name}): the same trainer "
                              f"under torchrun, {s.nproc} processes, {s.strategy.upper()}, grown "
                              f"{' → '.join(map(str, _depths(s.dist_depths)))} layers in {s.dist_steps} steps",
    }
    return stories.get(notebook, f"this run ({name})")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cfg, run_dir = config.setup_run(argv)
    for nb in EXPECT:
        print(f"\n{nb}")
        check(run_dir, cfg, nb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
