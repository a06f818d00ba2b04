"""``dte data check``: what matters about a corpus before spending any compute on it.

For the corpus in the given files (any format :mod:`dte_lib.data` reads; ``--roles`` for your own transcript tags):

- **loading**: kept and rejected records, grouped problems, a "format looks misread" line with the ``--roles`` to try;
- **length against the limits that cut it**: examples longer than the course's context (``TrainCfg.block_size``
  tokens under the course tokenizer — the byte-level BPE notebook 06 fits, fitted here to this corpus the same
  way), than the teacher fine-tune's ``TeacherCfg.max_length`` (SmolLM2's tokenizer and chat template; o200k_base
  as a stated proxy when the teacher is not cached) and than OpenAI's 65,536-token example cap (o200k_base);
- **markup residue** (the quality filter's checks), **CRLF** line endings (normalised to LF on loading), answers
  with **code blocks**;
- **exact duplicates** and **templated near-duplicates** (MinHash LSH from :mod:`dte_lib.diversity`, with the most
  similar pairs shown);
- **language** (English signals of :mod:`dte_lib.quality`, the scripts of non-ASCII letters);
- **the quality filter calibrated to this corpus** and its false-drop rate on these (good) examples
  (``filter_false_drop_rate``), with the thresholds and the percentiles they came from.

A one-screen summary comes first, details after; ``--json`` prints one JSON object on stdout instead.
The ``dte data`` command (``check`` and ``split``) is this module's :func:`main`; :mod:`dte_lib.data`, below it,
imports nothing from here.
Run it: ``dte data check my.jsonl`` · ``dte data check chats.txt --roles '<|me|>=assistant,<|rec|>=record' --json``
· ``dte data split my.jsonl --out splits/``.
Explained in docs/DATA.md.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from . import data, quality

OPENAI_LIMIT = 65_536  # OpenAI's per-example token cap for chat fine-tuning (dte_lib.openai_prep)


def _length_table(counts: list[int], limit: int, sources: list[str]) -> dict[str, Any]:
    over = [i for i, c in enumerate(counts) if c > limit]
    return {"limit": limit, "over": len(over), "over_share": len(over) / len(counts) if counts else 0.0,
            "max": max(counts, default=0), "median": statistics.median(counts) if counts else 0,
            "p95": sorted(counts)[int(0.95 * (len(counts) - 1))] if counts else 0,
            "over_examples": [(sources[i], counts[i]) for i in sorted(over, key=lambda i: -counts[i])[:5]]}


def token_lengths(examples: Sequence[data.ChatExample], cfg: Any) -> dict[str, Any]:
    """Tokens per example under the three tokenizers that matter, against their limits."""
    from . import openai_prep, tokenizer
    sources = [ex.source or ex.id for ex in examples]
    out: dict[str, Any] = {}
    tok = tokenizer.train_from_examples(examples, cfg.train.vocab_size)
    course = [len(tokenizer.encode_chat(tok, ex.messages)[0]) for ex in examples]
    out["course"] = {**_length_table(course, cfg.train.block_size, sources),
                     "what": f"TrainCfg.block_size, the student's context ({cfg.name} preset)",
                     "tokenizer": f"course byte-level BPE fitted to this corpus (vocab {len(tok)}, as notebook 06 "
                                  "does)"}
    teacher_counts, how = None, ""
    try:
        from . import teacher
        path = teacher.cache_dir() / teacher.BASE_MODEL_NAME
        if (path / "tokenizer.json").exists():
            from transformers import AutoTokenizer
            ttok = AutoTokenizer.from_pretrained(str(path))
            teacher_counts = [len(ttok(teacher.render_chat(ttok, ex.messages), add_special_tokens=False)
                                  ["input_ids"]) for ex in examples]
            how = f"{teacher.BASE_MODEL_NAME} tokenizer and chat template"
    except Exception:  # noqa: BLE001 - a missing or unreadable cache falls back to the stated proxy
        teacher_counts = None
    rows = [openai_prep.to_chat_row(ex) for ex in examples]
    o200k = [openai_prep.count_example(r) for r in rows]
    if teacher_counts is None:
        teacher_counts, how = o200k, "proxy: o200k_base (the teacher's tokenizer is not cached yet)"
    out["teacher"] = {**_length_table(teacher_counts, cfg.teacher.max_length, sources),
                      "what": f"TeacherCfg.max_length, the local fine-tune's window ({cfg.name} preset)",
                      "tokenizer": how, "fit": cfg.teacher.fit}
    out["openai"] = {**_length_table(o200k, OPENAI_LIMIT, sources),
                     "what": "OpenAI's per-example cap for chat fine-tuning", "tokenizer": "o200k_base"}
    return out


def _scripts(text: str) -> Counter:
    c: Counter = Counter()
    for ch in text:
        if ch.isalpha() and not ch.isascii():
            name = unicodedata.name(ch, "")
            c[name.split(" ")[0] if name else "UNKNOWN"] += 1
    return c


def raw_file_facts(paths: Sequence[str]) -> dict[str, Any]:
    """CRLF line endings and escaped \\r\\n inside JSON strings, per file (the loader normalises both)."""
    out = {}
    for f in data.corpus_files(paths):
        try:
            with data.open_text_bytes(f) as fh:  # a gzip file's content, a UTF-16 file's text
                raw = fh.read()
        except (OSError, EOFError, ValueError):  # unreadable: the loader has reported it
            continue
        out[str(f)] = {"crlf_lines": raw.count(b"\r\n"), "escaped_crlf": raw.count(b"\\r\\n"), "bytes": len(raw)}
    return out


def check(paths: Sequence[str], roles: str | dict | None = None, preset: str | None = None,
          max_line_bytes: int = data.DEFAULT_MAX_LINE_BYTES, tokens: bool = True) -> dict[str, Any]:
    """Everything ``dte data check`` reports, as one JSON-ready dict (see the module docstring)."""
    from . import config, diversity
    cfg = config.load(preset)
    res = data.load_corpus(list(paths), max_line_bytes=max_line_bytes, roles=roles)
    exs = res.examples
    report: dict[str, Any] = {
        "files": res.formats, "preset": cfg.name, "roles": data.format_roles(data.parse_roles(roles))
        if roles else None, "examples": res.kept, "rejected": res.rejected,
        "problems": [str(p) for p in res.problems[:50]], "problem_counts": dict(Counter(p.code for p in res.problems)),
        "misread": res.misread(), "proposed_roles": res.proposals, "summary_text": res.summary(),
    }
    report["raw"] = raw_file_facts(paths)
    if not exs:
        return report
    answers = [ex.response for ex in exs]
    sources = [ex.source or ex.id for ex in exs]
    report["stats"] = data.corpus_stats(exs)
    if tokens:
        report["tokens"] = token_lengths(exs, cfg)
    # markup and code
    markup = Counter()
    markup_examples = []
    for ex in exs:
        hits = quality.markup_hits(ex.response)
        markup.update(name for name, _ in hits)
        if hits and len(markup_examples) < 5:
            markup_examples.append((ex.source or ex.id, hits[0][1]))
    code = sum("```" in a for a in answers)
    report["markup"] = {"answers_with_residue": sum(1 for ex in exs if quality.markup_hits(ex.response)),
                        "by_check": dict(markup), "examples": markup_examples}
    report["code_blocks"] = {"answers": code, "share": code / len(exs),
                             "unclosed": sum(a.count("```") % 2 for a in answers)}
    report["crlf_lines"] = sum(v["crlf_lines"] + v["escaped_crlf"] for v in report["raw"].values())
    # duplicates
    groups = data.exact_duplicates(exs)
    report["exact_duplicates"] = {"groups": len(groups), "examples": sum(len(g) for g in groups),
                                  "removable": sum(len(g) - 1 for g in groups),
                                  "first_groups": [[ex.source or ex.id for ex in g] for g in groups[:5]]}
    thr = cfg.generate.dedup_jaccard
    pairs = diversity.near_duplicate_pairs(answers, thr)
    clusters = diversity.clusters_from_pairs(len(answers), pairs)
    report["near_duplicates"] = {
        "threshold": thr, "method": "MinHash LSH on word 3-grams, exact Jaccard check (dte_lib.diversity)",
        "pairs": len(pairs), "clusters": len(clusters), "answers_in_clusters": sum(len(c) for c in clusters),
        "share": sum(len(c) for c in clusters) / len(answers), "largest_clusters": [len(c) for c in clusters[:5]],
        "example_pairs": [{"jaccard": round(j, 3), "a": sources[a], "b": sources[b], "text_a": answers[a][:120],
                           "text_b": answers[b][:120]} for a, b, j in _spread_pairs(pairs, 3, answers)]}
    # language
    signals = [quality.english_signals(a) for a in answers]
    english = [a >= 0.85 and s >= 0.08 for a, s in signals]
    scripts = Counter()
    for a in answers:
        scripts.update(_scripts(a))
    report["language"] = {"english_share": sum(english) / len(exs),
                          "not_english_examples": [sources[i] for i, ok in enumerate(english) if not ok][:5],
                          "non_ascii_scripts": dict(scripts.most_common(5))}
    # the calibrated filter
    persona_path = cfg.path(cfg.data.persona)
    persona = data.load_persona(persona_path) if persona_path.exists() else None
    fd = quality.false_drop_report(exs, quality.FilterCfg.from_preset(cfg, calibrate_to_corpus=False), persona,
                                   cfg.data.val_fraction, cfg.data.test_fraction)
    report["filter"] = {k: v for k, v in fd.items() if k != "cfg"}
    report["filter"]["dropped_examples"] = fd["dropped_examples"][:10]
    report["filter_false_drop_rate"] = fd["filter_false_drop_rate"]
    return report


def _spread_pairs(pairs: list[tuple[int, int, float]], k: int, texts: Sequence[str]) -> list[tuple[int, int, float]]:
    """Up to k pairs with no example repeated, the most similar first, skipping identical texts (exact duplicates
    are listed on their own): what templated near-duplicates look like."""
    seen: set[int] = set()
    out = []
    for a, b, j in pairs:
        if a in seen or b in seen or data.normalize_text(texts[a]) == data.normalize_text(texts[b]):
            continue
        out.append((a, b, j))
        seen |= {a, b}
        if len(out) == k:
            break
    return out


def _pct(x: float) -> str:
    return f"{x:.1%}" if x else "0%"


def findings(rep: dict[str, Any]) -> list[str]:
    """What matters, most costly first: each a sentence with its number and what to do."""
    out = []
    for path, m in rep.get("misread", {}).items():
        out.append(f"the format of {path} looks misread ({m['count']} of {m['records']} records fail with "
                   f"{m['code']}) — {m['advice']}")
    if rep["rejected"] and not rep.get("misread"):
        out.append(f"{rep['rejected']} record(s) rejected — fix them (listed below) or they are left out")
    if not rep["examples"]:
        return out
    t = rep.get("tokens", {})
    if t.get("course", {}).get("over"):
        c = t["course"]
        out.append(f"{c['over']} of {rep['examples']} examples ({_pct(c['over_share'])}) are longer than the "
                   f"course's context of {c['limit']} tokens (longest {c['max']}): the student sees them in pieces "
                   "across packed blocks, never whole")
    if t.get("teacher", {}).get("over"):
        c = t["teacher"]
        out.append(f"{c['over']} examples ({_pct(c['over_share'])}) exceed the teacher fine-tune's max_length "
                   f"{c['limit']} (longest {c['max']}): "
                   + ("their answers are trimmed to the whole sentences that fit" if c.get("fit") == "trim"
                      else "their ends are cut") + " — raise teacher.max_length or shorten them")
    if t.get("openai", {}).get("over"):
        out.append(f"{t['openai']['over']} examples exceed OpenAI's {OPENAI_LIMIT:,}-token cap: OpenAI truncates them")
    nd = rep["near_duplicates"]
    if nd["share"] > 0.1:
        out.append(f"{nd['answers_in_clusters']} answers ({_pct(nd['share'])}) are templated near-duplicates in "
                   f"{nd['clusters']} clusters (Jaccard ≥ {nd['threshold']}): the model will learn the template; "
                   "vary them or keep one per cluster")
    ed = rep["exact_duplicates"]
    if ed["groups"]:
        out.append(f"{ed['removable']} exact duplicate(s) in {ed['groups']} group(s): remove them (they also leak "
                   "between train and test when their ids differ)")
    if rep["language"]["english_share"] < 0.95:
        out.append(f"only {_pct(rep['language']['english_share'])} of answers look English: the filter's "
                   "non-English check is calibrated accordingly; the course's prompts and probes are English")
    if rep["markup"]["answers_with_residue"]:
        out.append(f"{rep['markup']['answers_with_residue']} answers hold markup residue "
                   f"({', '.join(rep['markup']['by_check'])})")
    f = rep["filter"]
    if f["filter_false_drop_rate"] > 0.05:
        out.append(f"the calibrated filter still drops {_pct(f['filter_false_drop_rate'])} of your own examples "
                   f"({f['drop_reasons']}): look at them below")
    return out


def render(rep: dict[str, Any]) -> str:
    """The one-screen summary, then the details."""
    lines = []
    fmts = ", ".join(f"{p} ({f})" for p, f in rep["files"].items())
    lines.append(f"corpus: {fmts}" + (f", roles {rep['roles']}" if rep.get("roles") else ""))
    lines.append(f"  kept {rep['examples']} example(s), rejected {rep['rejected']} record(s)  [preset "
                 f"{rep['preset']}]")
    if rep["examples"]:
        s = rep["stats"]
        lines.append(f"  assistant words per example: median {s['assistant_words_median']:g} ({s['assistant_words_min']}–"
                     f"{s['assistant_words_max']}); {s['multi_turn']} multi-turn; {s['with_system']} with a "
                     "system prompt")
        for key in ("course", "teacher", "openai"):
            c = rep.get("tokens", {}).get(key)
            if c:
                lines.append(f"  {key:8s} limit {c['limit']:>6,} tokens: {c['over']:>4} over ({_pct(c['over_share'])}),"
                             f" median {c['median']:g}, p95 {c['p95']}, max {c['max']}  [{c['tokenizer']}]")
        nd, ed = rep["near_duplicates"], rep["exact_duplicates"]
        lines.append(f"  duplicates: {ed['groups']} exact group(s) ({ed['examples']} examples); near-duplicates: "
                     f"{nd['answers_in_clusters']} answers ({_pct(nd['share'])}) in {nd['clusters']} cluster(s)")
        lines.append(f"  markup residue in {rep['markup']['answers_with_residue']} answers; code blocks in "
                     f"{rep['code_blocks']['answers']} ({_pct(rep['code_blocks']['share'])}); CRLF line endings: "
                     f"{rep['crlf_lines']} (normalised to LF)")
        lang = rep["language"]
        lines.append(f"  language: {_pct(lang['english_share'])} of answers look English"
                     + (f"; non-ASCII scripts {lang['non_ascii_scripts']}" if lang["non_ascii_scripts"] else ""))
        f = rep["filter"]
        held = f["filter_false_drop_rate_heldout"]
        lines.append(f"  filter_false_drop_rate: {_pct(f['filter_false_drop_rate'])} of your examples dropped by "
                     f"the calibrated filter (held out {_pct(held) if held is not None else 'n/a'}; the preset's "
                     f"uncalibrated filter: {_pct(f['filter_false_drop_rate_uncalibrated'])})")
    found = findings(rep)
    lines.append("what matters:" if found else "what matters: nothing stands out — go ahead")
    lines += [f"  - {x}" for x in found]
    lines += ["", "details", "-------", rep["summary_text"]]
    if rep["examples"]:
        for key in ("course", "teacher", "openai"):
            c = rep.get("tokens", {}).get(key)
            if c and c["over_examples"]:
                lines.append(f"longest over the {key} limit ({c['what']}): "
                             + ", ".join(f"{s} {n} tokens" for s, n in c["over_examples"]))
        for g in rep["exact_duplicates"]["first_groups"]:
            lines.append("exact duplicates: " + ", ".join(g))
        for p in rep["near_duplicates"]["example_pairs"]:
            lines.append(f"near-duplicate pair (Jaccard {p['jaccard']}): {p['a']} ~ {p['b']}\n    {p['text_a']!r}\n"
                         f"    {p['text_b']!r}")
        for src, detail in rep["markup"]["examples"]:
            lines.append(f"markup: {src}: {detail}")
        if rep["language"]["not_english_examples"]:
            lines.append("not English-looking: " + ", ".join(rep["language"]["not_english_examples"]))
        lines.append("quality filter thresholds:")
        lines += [f"  {t}" for t in rep["filter"]["thresholds"]]
        for src, reason, detail in rep["filter"]["dropped_examples"]:
            lines.append(f"  dropped {src}: {reason} ({detail})")
    return "\n".join(lines)


def run_check(paths: Sequence[str], roles: str | None = None, preset: str | None = None, as_json: bool = False,
              max_line_bytes: int = data.DEFAULT_MAX_LINE_BYTES, all_problems: bool = False) -> int:
    """What ``dte data check`` runs; exit code 1 when any record was rejected."""
    rep = check(paths, roles=roles, preset=preset, max_line_bytes=max_line_bytes)
    if as_json:
        print(json.dumps(rep, ensure_ascii=False, default=str))
    else:
        if all_problems:
            rep["summary_text"] = data.load_corpus(list(paths), max_line_bytes=max_line_bytes,
                                                   roles=roles).summary(all_problems=True)
        print(render(rep))
    return 1 if rep["rejected"] else 0


# ---------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    """``dte data``: ``check`` (this module's report) and ``split`` (train/val/test JSONL files)."""
    ap = argparse.ArgumentParser(prog="dte data", description="Check and split chat corpora.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="what matters before spending: problems with file:line, lengths against the "
                                     "context and fine-tune limits, duplicates, markup, language, the calibrated "
                                     "filter's false-drop rate")
    c.add_argument("paths", nargs="+")
    c.add_argument("--max-line-bytes", type=int, default=data.DEFAULT_MAX_LINE_BYTES)
    c.add_argument("--roles", default=None, help="your transcript tags, e.g. '<|persona|>=assistant,<|record|>=record'")
    c.add_argument("--all", action="store_true", help="list every problem (default: the first 5 of each kind)")
    c.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of the text report")
    c.add_argument("--preset", default=None, help="whose limits to check against (default: $DTE_PRESET or demo)")
    s = sub.add_parser("split", help="write train/val/test JSONL files")
    s.add_argument("paths", nargs="+")
    s.add_argument("--out", required=True, help="directory for train.jsonl, val.jsonl, test.jsonl")
    s.add_argument("--val", type=float, default=0.1)
    s.add_argument("--test", type=float, default=0.1)
    s.add_argument("--roles", default=None, help="your transcript tags (as for check)")
    args = ap.parse_args(argv)
    if args.cmd == "check":
        return run_check(args.paths, roles=args.roles, preset=args.preset, as_json=args.json,
                         max_line_bytes=args.max_line_bytes, all_problems=args.all)
    res = data.load_corpus(args.paths, strict=True, roles=args.roles)
    parts = data.split(res.examples, args.val, args.test)
    for name, rows in parts.items():
        data.write_jsonl(Path(args.out) / f"{name}.jsonl", rows)
        print(f"{name}: {len(rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
