"""Run the course headless: every notebook in roadmap order, executed by papermill into one run directory.

- Notebooks are ``notebooks/NN_*.ipynb``, run in file-name order; each gets only ``PRESET`` and ``RUN_DIR`` (plus any
  ``-p NAME VALUE`` the notebook declares in its ``parameters`` cell). Secrets never travel as parameters —
  papermill writes parameters into the saved notebook — so keys stay in the environment, which the kernel inherits.
- Executed copies land in ``<run>/notebooks/``; a failing notebook stops the run, and its saved copy, error
  included, is the error log. ``--from NN`` resumes at a notebook once the earlier ones have succeeded in that run.
- An executed notebook is for reading: the kernels draw progress bars on this terminal, not into the notebook
  (:func:`dte_lib.ui.progress`), third-party loading bars are off, and each notebook is signed as it is written, so
  JupyterLab on this machine trusts it and draws its saved widgets.
- Once notebook 11 has succeeded, the final student and the local teacher are exported to GGUF with their model
  cards under ``<run>/export/`` (:func:`dte_lib.export.export_run`; nothing is rewritten when notebook 11 already did).
- At the end (and after a failure) ``<run>/report.md`` is rebuilt from ``metrics.json`` and ``course.json``: what
  the run did and the roadmap's four metrics first, then every notebook's figures.

- Each notebook's worked solution is copied to ``<run>/solutions/`` beside the executed copies (their
  ``../solutions/`` links resolve there); ``dte course solution NN RUN_DIR`` runs it with the run's own preset.

Run it: ``dte course run --preset demo`` · ``dte course run --preset ci --from 03`` · ``dte course list`` ·
``dte course solution 06 outputs/runs/demo``
(or ``python -m dte_lib.course run ...``).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from . import config, data, runlog, ui
from .data import atomic_write_text

STATE_FILE = config.RUN_STATE_FILE
# Third-party progress bars in the course's kernels: loading a checkpoint or mapping a small dataset takes a
# fraction of a second, and a bar saved in a notebook is a widget frozen at 0% in every viewer.
KERNEL_QUIET = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
# parameter names that look like secrets: papermill writes every parameter into the saved notebook
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|PASSPHRASE|CREDENTIAL|AUTH(?!OR)|BEARER|COOKIE|"
                         r"PRIVATE", re.I)


class CourseError(RuntimeError):
    """A notebook failed or the run cannot start; the message names the notebook and cell."""


def notebooks(directory: Path = config.NOTEBOOKS_DIR) -> list[Path]:
    """The course's notebooks in roadmap order (``NN_name.ipynb``)."""
    return sorted(p for p in directory.glob("[0-9][0-9]_*.ipynb"))


def outline(directory: Path = config.NOTEBOOKS_DIR) -> list[tuple[str, str]]:
    """(notebook stem, title from its first markdown heading) for every notebook, in order."""
    import nbformat
    rows = []
    for p in notebooks(directory):
        nb = nbformat.read(p, as_version=4)
        md = next((c.source for c in nb.cells if c.cell_type == "markdown"), "")
        title = next((line.lstrip("# ").strip() for line in md.splitlines() if line.startswith("#")), p.stem)
        rows.append((p.stem, title))
    return rows


def _select(nbs: list[Path], start: str | None, only: Sequence[str] | None) -> list[Path]:
    if only:
        chosen = [p for p in nbs if any(p.stem.startswith(o) for o in only)]
        missing = [o for o in only if not any(p.stem.startswith(o) for p in nbs)]
        if missing:
            raise CourseError(f"no notebook matches {', '.join(missing)}; have: {', '.join(p.stem for p in nbs)}")
        return chosen
    if start:
        idx = next((i for i, p in enumerate(nbs) if p.stem.startswith(start)), None)
        if idx is None:
            raise CourseError(f"--from {start}: no such notebook; have: {', '.join(p.stem for p in nbs)}")
        return nbs[idx:]
    return nbs


def load_state(run_dir: Path) -> dict[str, Any]:
    path = run_dir / STATE_FILE
    return json.loads(path.read_text()) if path.exists() else {"notebooks": {}}


def _save_state(run_dir: Path, state: dict[str, Any]) -> None:
    atomic_write_text(run_dir / STATE_FILE, json.dumps(state, indent=2) + "\n")


def sign(path: Path) -> None:
    """Sign an executed notebook with nbformat's notary (this user's key), so JupyterLab on this machine trusts it:
    it then draws the widget state papermill saved instead of the widgets' text lines."""
    import nbformat
    from nbformat.sign import NotebookNotary
    if path.exists():
        NotebookNotary().sign(nbformat.read(path, as_version=4))


def copy_solutions(rdir: Path, nbs: Sequence[Path], source: Path = config.REPO_ROOT / "solutions") -> None:
    """Put each notebook's worked solution beside its executed copy (``<run>/solutions/``), so the notebook's
    ``../solutions/NN_*.py`` link resolves from ``<run>/notebooks/`` as it does from ``notebooks/``."""
    found = [source / f"{nb.stem}.py" for nb in nbs if (source / f"{nb.stem}.py").is_file()]
    if found:
        (rdir / "solutions").mkdir(parents=True, exist_ok=True)
    for path in found:
        atomic_write_text(rdir / "solutions" / path.name, path.read_text(encoding="utf-8"))


def solution_path(number: str, directory: Path = config.REPO_ROOT / "solutions") -> Path:
    """``solutions/NN_*.py`` for notebook ``NN`` (``"06"`` or ``"06_month3_progressive"``)."""
    found = sorted(directory.glob(f"{number}*.py")) if number else []
    if len(found) != 1:
        have = ", ".join(p.stem[:2] for p in sorted(directory.glob("[0-9][0-9]_*.py")))
        raise CourseError(f"no single worked solution matches {number!r} — pass a notebook number ({have})")
    return found[0]


def run_solution(number: str, run_dir: str | os.PathLike) -> int:
    """Run notebook ``NN``'s worked solution against a run directory with this checkout's ``dte_lib`` and the
    preset the run recorded; its answers (``name = value``) print to stdout. Returns its exit code."""
    import subprocess
    path = solution_path(number)
    env = {**os.environ, **KERNEL_QUIET,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(config.REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, str(path), str(Path(run_dir).expanduser().resolve())], env=env).returncode


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def run(preset: str | None = None, run_dir: str | os.PathLike | None = None, start: str | None = None,
        only: Sequence[str] | None = None, params: dict[str, Any] | None = None, force: bool = False,
        notebook_dir: Path = config.NOTEBOOKS_DIR, progress: bool = True, corpus: str | None = None,
        roles: str | None = None, seed: int | None = None) -> Path:
    """Execute the selected notebooks in order; returns the run directory. Raises :class:`CourseError`.

    ``corpus`` / ``roles`` reach the notebooks' kernels as ``$DTE_CORPUS`` / ``$DTE_CORPUS_ROLES`` (a role map for
    transcripts with your own tags, see :func:`dte_lib.data.parse_roles`). ``seed`` (``$DTE_SEED`` in the kernels)
    replaces the preset's seed; the run records it, and a resumed run keeps it."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError
    from tqdm.auto import tqdm

    cfg = config.load(preset)
    rdir = config.run_dir_for(cfg.name, run_dir)
    params = dict(params or {})
    secret = [k for k in params if SECRET_NAME.search(k)]
    if secret:
        raise CourseError(f"refusing to pass {', '.join(secret)} as papermill parameter(s): the name looks like a "
                          f"secret (it matches {SECRET_NAME.pattern}), and papermill writes parameters into the "
                          "saved notebook under outputs/. Put secrets in the environment instead (the kernel "
                          "inherits it), e.g. export OPENAI_API_KEY=...")
    all_nbs = notebooks(notebook_dir)
    if not all_nbs:
        raise CourseError(f"no notebooks found in {notebook_dir}")
    selected = _select(all_nbs, start, only)
    state = load_state(rdir)
    if state.get("preset") not in (None, cfg.name):
        raise CourseError(f"{rdir} holds a {state['preset']!r} run; use another --run-dir for preset {cfg.name!r}")
    if start and not force:
        earlier = all_nbs[:all_nbs.index(selected[0])]
        not_done = [p.stem for p in earlier if state["notebooks"].get(p.stem, {}).get("status") != "ok"]
        if not_done:
            raise CourseError(f"cannot resume at {selected[0].stem}: in {rdir} these earlier notebooks have not "
                              f"succeeded: {', '.join(not_done)}. Run them first, or pass --force.")
    if seed is not None and state.get("seed") not in (None, seed) and state.get("notebooks"):
        raise CourseError(f"{rdir} was run with --seed {state['seed']}; use another --run-dir for seed {seed}")
    seed = seed if seed is not None else state.get("seed")
    state.update(preset=cfg.name, run_dir=str(rdir))
    if seed is not None:
        state["seed"] = seed
    state.setdefault("started", time.strftime("%Y-%m-%dT%H:%M:%S"))
    out_dir = rdir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    copy_solutions(rdir, selected, notebook_dir.parent / "solutions")

    kernel_env = {"DTE_PRESET": cfg.name, "DTE_RUN_DIR": str(rdir),
                  "PYTHONPATH": os.pathsep.join(filter(None, [str(config.REPO_ROOT), os.environ.get("PYTHONPATH")])),
                  **KERNEL_QUIET, ui.PROGRESS_ENV: "terminal" if progress else "off"}
    if seed is not None:
        kernel_env["DTE_SEED"] = str(seed)
    env_backup = {k: os.environ.get(k) for k in [*kernel_env, "DTE_CORPUS", "DTE_SEED", data.ROLES_ENV]}
    if roles:
        try:
            data.parse_roles(roles)
        except ValueError as e:
            raise CourseError(str(e)) from None
    if corpus:
        if not Path(corpus).exists():
            raise CourseError(f"--corpus {corpus}: no such file — check the path")
        os.environ["DTE_CORPUS"] = str(Path(corpus).resolve())  # kernels start in notebooks/: pass it absolute
    if roles:
        os.environ[data.ROLES_ENV] = roles
    os.environ.update(kernel_env)  # the kernels inherit the runner's environment
    bar = tqdm(selected, desc=f"course[{cfg.name}]", unit="nb", disable=not progress)
    try:
        for nb in bar:
            bar.set_postfix_str(nb.stem)
            declared = pm.inspect_notebook(str(nb))
            nb_params = {"PRESET": cfg.name, "RUN_DIR": str(rdir)}
            nb_params.update({k: v for k, v in params.items() if k in declared})
            out = out_dir / nb.name
            entry = state["notebooks"].setdefault(nb.stem, {})
            entry.update(status="running", output=str(out.relative_to(rdir)), error=None)
            _save_state(rdir, state)
            t0 = time.perf_counter()
            try:
                # the kernel's own stderr stays the runner's (uncaptured), so long work's bars draw here
                pm.execute_notebook(str(nb), str(out), parameters=nb_params, kernel_name="python3",
                                    cwd=str(nb.parent), execution_timeout=cfg.cell_timeout_s,
                                    progress_bar=False, log_output=False, request_save_on_cell_execute=True,
                                    # the kernel talks to this process over loopback TCP only; ipykernel 7's
                                    # "running over TCP without encryption" warning would open every notebook's log,
                                    # and jupyter_client interrupts the kernel before every shutdown, so a kernel
                                    # still answering a message logs "KeyboardInterrupt caught" at ERROR (seen in CI
                                    # on a loaded machine); a cell's own error reaches us through papermill instead
                                    extra_arguments=["--IPKernelApp.capture_fd_output=False",
                                                     "--IPKernelApp.log_level=CRITICAL"])
            except PapermillExecutionError as e:
                first_line = (e.source or "").strip().splitlines()[:1]
                sign(out)
                entry.update(status="failed", seconds=round(time.perf_counter() - t0, 1),
                             error={"cell": e.cell_index + 1, "execution_count": e.exec_count,
                                    "source": first_line[0] if first_line else "",
                                    "ename": e.ename, "evalue": e.evalue})
                _save_state(rdir, state)
                write_report(rdir)
                raise CourseError(f"{nb.name} failed at In [{e.exec_count}] (cell {e.cell_index + 1} of the "
                                  f"executed notebook, starting {entry['error']['source']!r}): "
                                  f"{e.ename}: {e.evalue}\n  the executed notebook with the full error: {out}"
                                  ) from None
            except Exception as e:  # kernel died, timeout, bad notebook JSON
                entry.update(status="failed", seconds=round(time.perf_counter() - t0, 1),
                             error={"ename": type(e).__name__, "evalue": str(e)})
                _save_state(rdir, state)
                write_report(rdir)
                raise CourseError(f"{nb.name} failed: {type(e).__name__}: {e}\n  partial output: {out}") from None
            sign(out)
            entry.update(status="ok", seconds=round(time.perf_counter() - t0, 1))
            _save_state(rdir, state)
            if progress:
                bar.write(f"{nb.stem}: ok in {entry['seconds']:.0f} s")
    finally:
        for k, v in env_backup.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if state["notebooks"].get("11_months10_12_refine", {}).get("status") == "ok":
        from . import export  # the final student and the teacher as GGUF files others' tools run (~3 s at demo)
        t0 = time.perf_counter()
        done = export.export_run(rdir, log=bar.write if progress else (lambda _: None))
        state["export"] = {"seconds": round(time.perf_counter() - t0, 1),
                           **{role: str(e.path.relative_to(rdir)) for role, e in done.items()}}
    state["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    _save_state(rdir, state)
    write_report(rdir)
    return rdir


# ---------------------------------------------------------------------------------------------- report
def _rounded(value: Any) -> Any:
    """Floats to 4 significant digits, inside lists and dicts too."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def _fmt(value: Any) -> str:
    """A figure for a person: rounded; a long list of numbers as its count, ends and range, never a raw dump."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list) and len(value) > 6 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                          for v in value):
        return (f"{len(value)} values: {value[0]:.4g} → {value[-1]:.4g} (min {min(value):.4g}, "
                f"max {max(value):.4g})")
    if isinstance(value, (dict, list)):
        text = json.dumps(_rounded(value), ensure_ascii=False)
        return text if len(text) <= 120 else text[:117] + "..."
    return str(value)


def _quote(text: str, limit: int = 320) -> str:
    """An answer as one markdown quote line: line breaks shown as ↵, cut at a word near ``limit`` characters."""
    text = re.sub(r"\s*\n+\s*", " ↵ ", (text or "").strip()) or "(empty)"
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0] + " …"
    return text.replace("|", "\\|")


def probe_section(rdir: Path, metrics: dict[str, Any]) -> list[str]:
    """The report's opening: the final student's own words on a few probes, beside the teacher's and the
    reference, each answer's scores, then the final model's four metrics (notebook 11's record)."""
    from . import inspector
    rows = inspector.load_final_probe_answers(rdir)
    if not rows:
        return []
    m = metrics.get("11_months10_12_refine", {})
    out = ["## What the final model says", "",
           f"The final student (`{m.get('final_model', 'final')}`) answers {len(rows)} of the evaluation probes "
           "(held out from training), sampled with the preset's scoring settings; beside it the fine-tuned teacher "
           "that wrote its synthetic corpus and the reference answer. Scores per answer: identity = cosine with the "
           "reference (sentence embeddings), fact recall = share of the probe's fact keywords said.", ""]
    for r in rows:
        out += [f"**{r['probe']}**", ""]
        for who, label in (("student", "student"), ("teacher", "teacher"), ("reference", "reference")):
            if who not in r:
                continue
            sc = r.get("scores", {}).get(who, {})
            marks = ", ".join(f"{k.replace('_', ' ')} {sc[k]:.2f}" for k in ("identity", "fact_recall") if k in sc)
            out.append(f"> *{label}*{f' ({marks})' if marks else ''}: {_quote(r[who])}  ")
        out.append("")
    if m.get("final_perplexity") is not None:
        keys = [("perplexity", 1), ("identity_normalised", 2), ("diversity", 2), ("coherence", 2)]
        cells = " · ".join(f"{k.replace('_', ' ')} {_pm(m, 'final_' + k, d)}"
                           + (f" (teacher {_pm(m, 'teacher_' + k, d)})"
                              if m.get("teacher_" + k) is not None and k != "perplexity" else "")
                           for k, d in keys)
        out += [f"The four metrics for this model on the test split: {cells} (± the 95% interval over prompts "
                "and sampling seeds); the table below sets them against the roadmap's thresholds.", ""]
    return out


# What a failing week-1 check means for the learner (the levers notebook 03 names).
WEEK1_LEVERS = {
    "keep_rate": "too many answers fail the quality filter: read the drop reasons (notebook 03) and fix their cause "
                 "— usually max_tokens too low for the length hint, or a weak teacher",
    "persona_rate": "too few answers speak as Deep Tree Echo: strengthen the persona system prompt or the few-shot "
                    "examples, or fine-tune the teacher longer (notebook 01)",
    "distinct_2": "the answers reuse the same phrases: widen the prompt bank (more topics, tasks, styles) or raise "
                  "the temperature",
    "self_bleu": "the answers resemble each other: widen the prompt bank or raise the temperature",
    "near_dup_share": "many answers are near-duplicates: widen the prompt bank; dedup removes them, but they cost "
                      "generation",
}


def _final_metrics(metrics: dict[str, Any]) -> tuple[str, str, dict[str, Any]] | None:
    """(notebook, prefix, figures) of the latest evaluated model: notebook 11's ``final_`` if it ran, else the
    latest stage any notebook scored on the four metrics (``<prefix>meets_perplexity`` keys)."""
    for name in sorted((k for k in metrics if not k.startswith("_")), reverse=True):
        m = metrics[name]
        prefixes = [k[: -len("meets_perplexity")] for k in m if k.endswith("meets_perplexity")]
        prefixes = [p for p in prefixes if p != "teacher_"]
        if prefixes:
            prefix = "final_" if "final_" in prefixes else sorted(prefixes)[-1]
            return name, prefix, m
    return None


def _num(value: Any, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _pm(record: dict[str, Any], key: str, digits: int = 3) -> str:
    from .dashboard import with_interval
    return with_interval(record, key, f"{{:.{digits}f}}")


def narrative(rdir: Path, state: dict[str, Any], metrics: dict[str, Any]) -> list[str]:
    """The report's opening for a person: what the run did, the four metrics against the roadmap, the week-1
    decision and what it means. Built from ``metrics.json``; a sentence whose numbers are missing is left out."""
    from . import dashboard
    nbs = state.get("notebooks", {})
    ok = [n for n, e in nbs.items() if e.get("status") == "ok"]
    failed = [n for n, e in nbs.items() if e.get("status") == "failed"]
    seconds = sum(e.get("seconds") or 0 for e in nbs.values())
    g = lambda nb, key: metrics.get(nb, {}).get(key)  # noqa: E731
    out = probe_section(rdir, metrics) + ["## What this run did", ""]
    did = [f"{len(ok)} of {len(course_notebooks(nbs))} notebooks ran"
           + (f" (failed: {', '.join(failed)})" if failed else "") + f", {seconds / 60:.1f} minutes in all."]
    if g("01_week1_teacher", "val_loss_finetuned") is not None:
        did.append(f"The teacher ({g('01_week1_teacher', 'base_model') or 'base model'}, "
                   f"{g('01_week1_teacher', 'backend')} backend) was fine-tuned on "
                   f"{g('01_week1_teacher', 'train_examples')} examples: validation loss "
                   f"{_num(g('01_week1_teacher', 'val_loss_base'))} → {_num(g('01_week1_teacher', 'val_loss_finetuned'))}.")
    if g("04_month1_expand", "raw") is not None:
        did.append(f"It wrote {g('04_month1_expand', 'raw')} synthetic answers; {g('04_month1_expand', 'kept')} passed "
                   f"the quality filter and {g('04_month1_expand', 'clean')} remained after near-duplicate removal "
                   f"(`corpus/clean.jsonl`).")
    elif g("02_week1_generate", "generated") is not None:
        did.append(f"It wrote {g('02_week1_generate', 'generated')} synthetic answers.")
    if g("07_month4_layers_1_4", "final_depth") is not None:
        did.append(f"A GPT-2 was grown from scratch to {g('07_month4_layers_1_4', 'final_depth')} layers "
                   f"({g('07_month4_layers_1_4', 'final_params'):,} parameters, "
                   f"{g('07_month4_layers_1_4', 'tokens_trained'):,} tokens) in month 4")
        last_depth = g("11_months10_12_refine", "depth") or g("09_month6_identity_metrics", "depth")
        if not last_depth:
            did[-1] += "."
        elif last_depth == g("07_month4_layers_1_4", "final_depth"):
            did[-1] += f"; the later phases kept that depth ({last_depth} layers) and trained and refined it further."
        else:
            did[-1] += f"; the later phases grew it to {last_depth} layers and refined it."
    out += [" ".join(did), ""]

    final = _final_metrics(metrics)
    preset = state.get("preset")
    if final and preset in config.PRESET_NAMES:
        nb, prefix, m = final
        cfg = config.load(preset)
        model = m.get("final_model") if prefix == "final_" else prefix.rstrip("_")
        met = [dashboard.passes(k, m.get(prefix + k), cfg) for k in dashboard.METRICS]
        out += [f"## The roadmap's four success metrics — {sum(bool(x) for x in met)} of 4 met", "",
                f"Model: `{model}` ({nb}). Floors and ceilings come from the references themselves (notebook 09): "
                "a value below the floor is below what an on-persona answer to the wrong question reaches.", "",
                "| metric | value | roadmap | met | floor – ceiling |", "|---|---|---|---|---|"]
        for k, ok_ in zip(dashboard.METRICS, met):
            op, thr = dashboard.thresholds(cfg)[k]
            lo, hi = m.get(f"{prefix}{k}_floor"), m.get(f"{prefix}{k}_ceiling")
            bounds = f"{_num(lo)} – {_num(hi)}" if lo is not None and hi is not None else "—"
            if k == "diversity" and m.get(f"{prefix}diversity_references") is not None:
                bounds = f"references' own: {_num(m[prefix + 'diversity_references'])}"
            mark = "—" if ok_ is None else "✓" if ok_ else "✗"
            out.append(f"| {k} | {_pm(m, prefix + k, 1 if k == 'perplexity' else 3)} | {op} {thr:g} | {mark} "
                       f"| {bounds} |")
        for fig in m.get("_figures", []):
            if "dashboard" in fig:
                out += ["", f"![{Path(fig).stem}]({fig})"]
        if m.get("teacher_perplexity") is not None:
            out += ["", f"For reference, the fine-tuned teacher on the same yardstick: identity "
                        f"{_pm(m, 'teacher_identity')}, diversity {_pm(m, 'teacher_diversity')}, coherence "
                        f"{_pm(m, 'teacher_coherence')}, bits per byte {_num(m.get('teacher_bits_per_byte'))} "
                        f"(the model's: {_num(m.get(prefix + 'bits_per_byte'))}; perplexities over different "
                        "vocabularies do not compare)."]
        out.append("")
    elif not final:
        out += ["## The roadmap's four success metrics", "", "Not measured yet: notebooks 08–11 score them.", ""]

    decision = g("03_week1_evaluate", "decision")
    if decision:
        out += ["## The week-1 decision", "", f"**{decision}**", ""]
        checks_file = rdir / "corpus" / "week1_decision.json"
        checks = json.loads(checks_file.read_text()).get("checks", []) if checks_file.exists() else []
        if checks:
            out += ["| check | value | needs | passed |", "|---|---|---|---|"]
            out += [f"| {c['check']} | {_num(c['value'])} | {c['needs']} | {'✓' if c['pass'] else '✗'} |"
                    for c in checks]
            out.append("")
        failing = g("03_week1_evaluate", "failing_checks") or []
        if decision == "proceed":
            out.append("Every check passed: the synthetic corpus is fit to scale up, as notebook 04 did.")
        else:
            out.append("The roadmap's answer to a failed check is to improve the generation and run week 1 again. "
                       "For this run that means:")
            out += [f"- **{f}**: {WEEK1_LEVERS.get(f, 'see notebook 03')}" for f in failing]
            out += ["", "Then run week 1 again in a fresh run directory, until it says *proceed* (answers already in "
                    "`corpus/raw.jsonl` are never asked for twice, so changed prompts need a new run): "
                    f"`dte course run --preset {state.get('preset', 'demo')} --run-dir "
                    f"outputs/runs/{state.get('preset', 'demo')}-v2 --only 00 01 02 03`. This run did not stop there: the course carried on with the corpus it has, so every later "
                    "number describes a model trained on a corpus week 1 judged not yet good enough — read them "
                    "as the course working end to end, not as what a refined corpus would give."]
        out.append("")
    return out


def course_notebooks(entries: dict[str, Any]) -> list[str]:
    """The course's notebooks by stem (those of this checkout, plus any the run recorded)."""
    return list(dict.fromkeys([p.stem for p in notebooks()] + list(entries)))


def write_report(run_dir: str | os.PathLike) -> Path:
    """Rebuild ``report.md``: a short narrative for a person (what the run did, the four success metrics against
    the roadmap's thresholds, the week-1 decision and what it means), then status and time per notebook, each
    notebook's key figures and its plots."""
    rdir = Path(run_dir)
    state, metrics = load_state(rdir), runlog.load(rdir)
    lines = [f"# Deep Tree Echo lab — run report ({state.get('preset', '?')} preset)", "",
             f"Run directory: `{rdir}`  ", f"Started {state.get('started', '?')}, "
             f"finished {state.get('finished', 'not yet')}.", ""]
    lines += narrative(rdir, state, metrics)
    lines += ["## Notebooks", "", "| notebook | status | seconds |", "|---|---|---|"]
    names = list(dict.fromkeys(list(state.get("notebooks", {})) + [k for k in metrics if not k.startswith("_")]))
    for name in names:
        e = state.get("notebooks", {}).get(name, {})
        link = f"[{name}]({e['output']})" if e.get("output") else name
        lines.append(f"| {link} | {e.get('status', '—')} | {e.get('seconds', '—')} |")
    for name in names:
        e = state.get("notebooks", {}).get(name, {})
        m = metrics.get(name, {})
        lines += ["", f"## {name}", ""]
        if e.get("error"):
            err = e["error"]
            lines.append(f"**Failed** at In [{err.get('execution_count', '?')}] (cell {err.get('cell', '?')}): "
                         f"`{err.get('ename')}: {err.get('evalue')}`")
            lines.append("")
        figures = {k: v for k, v in m.items() if not k.startswith("_")}
        if figures:
            lines += ["| figure | value |", "|---|---|"]
            lines += [f"| {k} | {_fmt(v)} |" for k, v in sorted(figures.items())]
        for fig in m.get("_figures", []):
            lines += ["", f"![{Path(fig).stem}]({fig})"]
    return atomic_write_text(rdir / "report.md", "\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dte course", description="Run the notebook course headless with papermill.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="execute notebooks in roadmap order")
    r.add_argument("--preset", default=None, help="ci | demo | long | full (default: $DTE_PRESET or demo)")
    r.add_argument("--run-dir", default=None, help="default: $DTE_RUN_DIR or outputs/runs/<preset>")
    r.add_argument("--from", dest="start", default=None, help="resume at this notebook (e.g. 03)")
    r.add_argument("--only", nargs="+", default=None, help="run only these notebooks (e.g. 00 03)")
    r.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="a notebook parameter, passed to the notebooks that declare it")
    r.add_argument("--force", action="store_true", help="resume even if earlier notebooks did not succeed")
    r.add_argument("--corpus", default=None, help="your own examples (any format `dte data check` reads) for every phase")
    r.add_argument("--roles", default=None,
                   help="your transcript tags, e.g. '<|persona|>=assistant,<|record|>=record' (see dte data check)")
    r.add_argument("--seed", type=int, default=None,
                   help="the preset with another seed (recorded in the run; its ranges in dte_lib.expect come from "
                        "several)")
    r.add_argument("--no-progress", action="store_true")
    ls = sub.add_parser("list", help="list notebooks and their status in a run")
    ls.add_argument("--preset", default=None)
    ls.add_argument("--run-dir", default=None)
    rep = sub.add_parser("report", help="rebuild report.md of a run")
    rep.add_argument("run_dir")
    so = sub.add_parser("solution", help="run notebook NN's worked solution against a run (its preset is read "
                                         "from the run directory)")
    so.add_argument("number", help="the notebook's number, e.g. 06")
    so.add_argument("run_dir", help="the run directory the course wrote, e.g. outputs/runs/demo")
    args = ap.parse_args(argv)
    if args.cmd == "solution":
        try:
            return run_solution(args.number, args.run_dir)
        except CourseError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    if args.cmd == "run":
        try:
            rdir = run(args.preset, args.run_dir, args.start, args.only,
                       {k: _parse_value(v) for k, v in args.param}, args.force, progress=not args.no_progress,
                       corpus=args.corpus, roles=args.roles, seed=args.seed)
        except CourseError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"done: {rdir / 'report.md'}")
        return 0
    if args.cmd == "list":
        name = config.resolve_preset_name(args.preset)
        rdir = config.run_dir_for(name, args.run_dir)
        st = load_state(rdir)["notebooks"]
        for nb in notebooks():
            e = st.get(nb.stem, {})
            print(f"{nb.stem:40s} {e.get('status', '-'):8s} {e.get('seconds', '')}")
        return 0
    print(write_report(args.run_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
