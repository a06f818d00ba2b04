"""The generation inspector: pick checkpoints, type a prompt, move the sampling sliders, compare answers side by side
with their metric scores.

Sources it offers (:func:`find_checkpoints`): every stage checkpoint of the run (``checkpoints/<stage>/`` and the
``checkpoints/`` of each later phase's directory, e.g. ``nb08/``), the fine-tuned teacher (``teacher/
model_info.json`` from notebook 01, local backend) and, if asked, the base SmolLM2 — any Hugging Face causal-LM
directory works, and a plain ``prompts -> answers`` function can be added for comparisons.

Scores per answer: *identity* = cosine with the reference answer when the prompt is a held-out (val or test) prompt or a
probe paraphrase (else with the persona summary, marked "vs persona"); *fact recall* of the probe's fact keywords;
*copy rate* against the training corpus (word 8-grams); *distinct-2* within the answer; words.

Answers a person can read: :func:`probe_table` puts the answers of the teacher and of one or more students to the
evaluation probes side by side (probe | teacher | student...), sampled with the preset's scoring settings; the
teacher's answers are cached in ``run_dir/eval/probe_answers/teacher.jsonl`` so notebooks 07–11 ask it once.
``Inspector.probe_table()`` does the same for the inspector's selected sources.

Headless: ``Inspector(...).set(prompt=..., temperature=...)`` then ``.generate()`` returns the rows and ``.html()``
the table — what the tests drive. In Jupyter ``.widget()`` returns the ipywidgets UI; notebooks also ``display``
the static HTML so an executed notebook keeps a view without a kernel.

Explained in notebook 11 (months 10–12). Run it: ``python -m dte_lib.inspector outputs/runs/demo "Who are you?"``.
"""
from __future__ import annotations

import html as _html
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from . import metrics, ui


# the roadmap phase of each notebook that writes checkpoints (labels in the inspector)
PHASES = {"06": "month 3", "07": "month 4", "08": "month 5", "09": "month 6", "10": "months 7–9", "11": "months 10–12"}
FINAL = "final"  # the one label for the course's final model (the model notebook 11 chose on val)


def phase_label(directory: str) -> str:
    """Which notebook and roadmap phase wrote a checkpoint directory: the run's own ``checkpoints/`` is notebook
    07's trainer, ``nb10-mech`` is notebook 10's mechanisms arm, ``06_short_run`` notebook 06's short run."""
    if directory in ("", "."):
        return f"07 {PHASES['07']}"
    m = re.fullmatch(r"(?:nb)?(\d\d)(?:[-_](.+))?", directory.split("/")[0])
    if not m or m.group(1) not in PHASES:
        return directory
    rest = " ".join(filter(None, [(m.group(2) or "").replace("_", " "), *directory.split("/")[1:]]))
    return f"{m.group(1)} {PHASES[m.group(1)]}" + (f" {rest}" if rest else "")


def find_checkpoints(run_dir: str | Path, teacher: bool = True, base_teacher: bool = False,
                     final: str | Path | None = None) -> dict[str, Any]:
    """label -> HF directory for every checkpoint in the run (course order), the from-scratch ablation models and
    the teacher(s). Each label names the phase that wrote it (:func:`phase_label`: ``07 month 4 · s02-grow-d2``,
    ``10 months 7–9 mech · end``); the course's final model — ``final``, else the one notebook 11 recorded — is
    labelled ``final · <its phase>``, and no other checkpoint carries the word."""
    run_dir = Path(run_dir)
    if final is None:
        from .export import final_student
        final = final_student(run_dir, fallback=False)
    final = Path(final).resolve() if final else None
    out: dict[str, Any] = {}

    def add(label: str, d: Path) -> None:
        if final is not None and d.resolve() == final:
            label = f"{FINAL} · {label.replace(' · end', '')}"
        out[label] = d

    roots = [run_dir] + sorted(p for p in run_dir.iterdir() if p.is_dir() and (p / "checkpoints").is_dir()
                               and p != run_dir) if run_dir.exists() else []
    for root in roots:
        ck = root / "checkpoints"
        if not ck.is_dir():
            continue
        phase = phase_label("" if root == run_dir else root.name)
        for d in sorted(ck.iterdir()):
            if (d / "config.json").exists() and d.name != "final":
                add(f"{phase} · {d.name}", d)
        if (ck / "final" / "config.json").exists():
            add(f"{phase} · end", ck / "final")
    # from-scratch models (the ablation's arms, notebook 10) live one level deeper: offer their finals
    for d in sorted(run_dir.glob("*/*/checkpoints/final")) if run_dir.exists() else []:
        if (d / "config.json").exists():
            add(f"10 {PHASES['10']} {d.parent.parent.parent.name} · {d.parent.parent.name} (from scratch)", d)
    from . import teacher as teacher_mod
    info = teacher_mod.load_model_info(run_dir, missing_ok=True) if teacher else None
    if info and info.get("backend", "local") == "local" and info.get("path") and Path(info["path"]).exists():
        out["teacher"] = Path(info["path"])
    if base_teacher:
        out["smollm2-base"] = Path(teacher_mod.base_model_dir())
    return out


def _load_answerer(src: Any, *, max_new_tokens: int, temperature: float, top_p: float, system: str | None,
                   seed: int, repetition_penalty: float = 1.0, batch_size: int = 8) -> Callable[[list[str]], list[str]]:
    """A ``prompts -> answers`` function for a HF directory (loaded once per call) or a callable (as is)."""
    if callable(src):
        return src
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(src))
    return metrics.hf_answerer(model, tok, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                               system=system, seed=seed, batch_size=batch_size,
                               repetition_penalty=repetition_penalty)


def probe_prompts(probes: Sequence[dict], n: int | None = None) -> list[str]:
    """The first paraphrase of each of the first ``n`` evaluation probes (data/probes.jsonl)."""
    return [p["paraphrases"][0] for p in list(probes)[:n]]


def probe_table(run_dir: str | Path, cfg: Any, students: dict[str, Any], probes: Sequence[dict], *,
                n: int = 4, teacher: bool = True, system: str | None = None):
    """A compact DataFrame ``probe | teacher | <student>...``: each source's answer to the first paraphrase of the
    first ``n`` probes, sampled with the preset's scoring settings (``cfg.eval``: temperature, top-p, repetition
    penalty, max new tokens; seed ``cfg.seed``).

    ``students`` maps a column name to a HF directory or a ``prompts -> answers`` function. The teacher is notebook
    01's fine-tuned local teacher (:func:`find_checkpoints`); its answers are cached per prompt and settings in
    ``run_dir/eval/probe_answers/teacher.jsonl``. Without a local teacher the column shows the probe's reference
    answer instead, headed ``reference (no local teacher)``.
    """
    import pandas as pd
    e = cfg.eval
    prompts = probe_prompts(probes, n)
    gen = dict(max_new_tokens=e.max_new_tokens, temperature=e.temperature, top_p=e.top_p, system=system,
               seed=cfg.seed, repetition_penalty=e.repetition_penalty)
    cols: dict[str, list[str]] = {"probe": prompts}
    teacher_dir = find_checkpoints(run_dir).get("teacher") if teacher else None
    if teacher_dir is not None:
        cols["teacher"] = _cached_answers(Path(run_dir) / "eval" / "probe_answers" / "teacher.jsonl",
                                          teacher_dir, prompts, gen)
    elif teacher:
        ref = {q: p["reference"] for p in probes for q in p["paraphrases"]}
        cols["reference (no local teacher)"] = [ref[q] for q in prompts]
    for name, src in students.items():
        cols[name] = _load_answerer(src, batch_size=e.batch_size, **gen)(prompts)
    return pd.DataFrame(cols)


def _cached_answers(path: Path, src: Any, prompts: list[str], gen: dict[str, Any]) -> list[str]:
    """Answers keyed by (prompt, settings, source) in a JSONL file; only the missing ones are generated."""
    key = json.dumps({**gen, "source": str(src)}, sort_keys=True)
    have = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            if r["settings"] == key:
                have[r["prompt"]] = r["answer"]
    todo = [p for p in prompts if p not in have]
    if todo:
        answers = _load_answerer(src, **gen)(todo)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            for p, a in zip(todo, answers):
                f.write(json.dumps({"prompt": p, "answer": a, "settings": key}) + "\n")
                have[p] = a
    return [have[p] for p in prompts]


def score_answer(answer: str, reference: str | None, keywords: Sequence[str] = (),
                 evalset: metrics.EvalSet | None = None, persona_summary: str = "") -> dict[str, Any]:
    """One answer's scores: identity (cosine with the reference, else with the persona summary), words, distinct-2,
    fact recall of the probe's keywords (when it has a fact) and copy rate against the training corpus."""
    e = metrics._embed([answer, reference or persona_summary])
    out = {"identity": float(e[0] @ e[1]), "identity_vs": "reference" if reference else "persona",
           "words": len(answer.split()), "distinct_2": metrics.diversity([answer])["distinct_2"]}
    if keywords:
        out["fact_recall"] = metrics.keyword_recall(answer, keywords)
    if evalset is not None:
        out["copy_rate"] = metrics.copy_rate([answer], evalset.train_grams, evalset.copy_n)
    return out


FINAL_PROBES = Path("eval") / "final_probe_answers.jsonl"  # what report.md opens with


def final_probe_answers(run_dir: str | Path, cfg: Any, student_dir: Any, evalset: metrics.EvalSet, *,
                        n: int = 4, system: str | None = None, name: str = "final", out: str | Path | None = None):
    """The final student's answers to the first ``n`` probes beside the teacher's and the reference, each scored
    (:func:`score_answer`); written to ``out`` (default ``<run>/eval/final_probe_answers.jsonl``, what ``report.md``
    opens with) and returned as a DataFrame ``probe | reference | teacher | <name>``. Sampling as
    :func:`probe_table`."""
    from .data import write_jsonl
    table = probe_table(run_dir, cfg, {name: student_dir}, evalset.probes, n=n, system=system)
    facts = {f["id"]: f for f in evalset.persona.get("facts", [])}
    rows = []
    for i, probe in enumerate(list(evalset.probes)[:n]):
        kws = facts.get(probe.get("fact_id") or "", {}).get("keywords", [])
        row = {"probe": table["probe"][i], "reference": probe["reference"], "student": table[name][i]}
        if "teacher" in table:
            row["teacher"] = table["teacher"][i]
        row["scores"] = {who: score_answer(row[who], probe["reference"], kws, evalset)
                         for who in ("student", "teacher") if who in row}
        rows.append(row)
    write_jsonl(Path(out) if out is not None else Path(run_dir) / FINAL_PROBES, rows)
    table = table.drop(columns=[c for c in table.columns if c.startswith("reference")])
    table.insert(1, "reference", [r["reference"] for r in rows])
    return table


def load_final_probe_answers(run_dir: str | Path) -> list[dict[str, Any]]:
    """What :func:`final_probe_answers` wrote ([] before notebook 11 has run)."""
    path = Path(run_dir) / FINAL_PROBES
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def answer_html(text: str) -> str:
    """One answer as HTML: escaped, each run of line breaks shown as ``↵`` (``↵×N`` for a run of N), empty as
    *(empty)* — so a reader sees where a small model emits blank lines instead of a wall of white space."""
    if not text:
        return "<i>(empty)</i>"
    return re.sub(r"\n+", lambda m: " ↵ " if len(m.group()) == 1 else f" ↵×{len(m.group())} ", _html.escape(text))


def table_html(df) -> str:
    """A side-by-side answers table as static HTML that wraps long answers (kept in a saved notebook)."""
    esc = _html.escape
    head = "".join(f"<th style='text-align:left;padding:4px'>{esc(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td style='vertical-align:top;text-align:left;padding:4px;max-width:340px;"
                                    f"border-top:1px solid #ddd'>{answer_html(str(v))}</td>" for v in rec)
                   + "</tr>" for rec in df.itertuples(index=False))
    return f"<table style='border-collapse:collapse;font-size:90%'><tr>{head}</tr>{body}</table>"


class Inspector:
    """Side-by-side generations from several checkpoints with their metric scores (see the module docstring)."""

    def __init__(self, sources: dict[str, Any], *, persona: dict, evalset: metrics.EvalSet | None = None,
                 selected: Sequence[str] | None = None, prompt: str = "Who are you, and how do you remember things?",
                 temperature: float = 0.8, top_p: float = 0.95, max_new_tokens: int = 48,
                 system: str | None = None, seed: int = 0, repetition_penalty: float = 1.0, device: Any = "cpu"):
        if not sources:
            raise ValueError("Inspector needs at least one checkpoint or answer function")
        self.sources = dict(sources)
        self.persona, self.evalset, self.system, self.seed = persona, evalset, system, seed
        self.device = device  # where checkpoints given as directories are loaded (auto | cpu | cuda | mps)
        self.selected = list(selected) if selected else list(self.sources)[-2:]
        self.prompt, self.temperature, self.top_p, self.max_new_tokens = prompt, temperature, top_p, max_new_tokens
        self.repetition_penalty = repetition_penalty
        self.rows: list[dict[str, Any]] = []
        self._loaded: dict[str, tuple[Any, Any]] = {}
        self._refs: dict[str, tuple[str, list[str]]] = {}
        if evalset is not None:
            facts = {f["id"]: f for f in persona.get("facts", [])}
            for e in evalset.examples:
                self._refs[e.prompt] = (e.response, [])
            for p in evalset.probes:
                kws = facts.get(p.get("fact_id") or "", {}).get("keywords", [])
                for q in p["paraphrases"]:
                    self._refs[q] = (p["reference"], kws)
        self._ui = None

    # -------------------------------------------------------------------------------------------- headless
    def set(self, **kwargs: Any) -> "Inspector":
        """Change prompt / temperature / top_p / max_new_tokens / selected (what the sliders and boxes do)."""
        for k, v in kwargs.items():
            if k not in ("prompt", "temperature", "top_p", "max_new_tokens", "selected"):
                raise KeyError(f"Inspector.set: unknown setting {k!r}")
            setattr(self, k, list(v) if k == "selected" else v)
        return self

    def _answerer(self, name: str) -> Callable[[list[str]], list[str]]:
        src = self.sources[name]
        if callable(src):
            return src
        if name not in self._loaded:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
            from .device import resolve
            self._loaded[name] = (AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32)
                                  .to(resolve(self.device)), AutoTokenizer.from_pretrained(str(src)))
        model, tok = self._loaded[name]
        return metrics.hf_answerer(model, tok, max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                   top_p=self.top_p, system=self.system, seed=self.seed, batch_size=1,
                                   repetition_penalty=self.repetition_penalty)

    def score(self, answer: str) -> dict[str, Any]:
        ref, kws = self._refs.get(self.prompt.strip(), (None, []))
        return score_answer(answer, ref, kws, self.evalset, self.persona.get("summary", ""))

    def generate(self) -> list[dict[str, Any]]:
        """Answer the prompt with every selected source; returns (and keeps) one row per source."""
        unknown = [s for s in self.selected if s not in self.sources]
        if unknown:
            raise KeyError(f"unknown checkpoint(s) {unknown}; choose from {list(self.sources)}")
        self.rows = []
        for name in self.selected:
            answer = self._answerer(name)([self.prompt])[0]
            self.rows.append({"checkpoint": name, "answer": answer, **self.score(answer)})
        if self._ui is not None:
            self._ui["out"].value = self.html()
        return self.rows

    def probe_table(self, n: int = 4):
        """probe | <each selected source>: the selected sources' answers to the first paraphrase of ``n`` probes
        (needs an ``evalset``), with the inspector's current sampling settings."""
        import pandas as pd
        if self.evalset is None:
            raise ValueError("Inspector.probe_table needs evalset= (the probes come from it)")
        prompts = probe_prompts(self.evalset.probes, n)
        cols: dict[str, list[str]] = {"probe": prompts}
        for name in self.selected:
            cols[name] = self._answerer(name)(prompts)
        return pd.DataFrame(cols)

    def html(self) -> str:
        """The current rows as a static HTML table (answers side by side, scores under each)."""
        esc = _html.escape
        head = (f"<p><b>prompt</b>: {esc(self.prompt)} &nbsp; <small>temperature {self.temperature:g}, top-p "
                f"{self.top_p:g}, max tokens {self.max_new_tokens}</small></p>")
        if not self.rows:
            return head + "<p><i>press Generate</i></p>"
        cells = []
        for r in self.rows:
            scores = " · ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                for k, v in r.items() if k not in ("checkpoint", "answer"))
            cells.append(f"<td style='vertical-align:top;border:1px solid #ccc;padding:6px;max-width:360px'>"
                         f"<b>{esc(r['checkpoint'])}</b><br>{answer_html(r['answer'])}"
                         f"<br><small style='color:#555'>{esc(scores)}</small></td>")
        return head + "<table style='border-collapse:collapse'><tr>" + "".join(cells) + "</tr></table>"

    # -------------------------------------------------------------------------------------------- widgets
    def widget(self):
        """The ipywidgets UI: checkpoints, prompt, temperature / top-p / max-tokens sliders, Generate, output."""
        import ipywidgets as W
        pick = W.SelectMultiple(options=list(self.sources), value=tuple(s for s in self.selected if s in self.sources),
                                description="checkpoints",
                                rows=min(8, len(self.sources)))
        prompt = W.Textarea(value=self.prompt, description="prompt", layout=W.Layout(width="90%"))
        temp = W.FloatSlider(value=self.temperature, min=0.0, max=1.5, step=0.05, description="temperature")
        top_p = W.FloatSlider(value=self.top_p, min=0.1, max=1.0, step=0.05, description="top-p")
        max_t = W.IntSlider(value=self.max_new_tokens, min=8, max=256, step=8, description="max tokens")
        button = W.Button(description="Generate", button_style="primary")
        out = W.HTML(self.html())
        self._ui = {"pick": pick, "prompt": prompt, "temperature": temp, "top_p": top_p, "max_new_tokens": max_t,
                    "button": button, "out": out}

        def on_click(_):
            self.set(selected=pick.value, prompt=prompt.value, temperature=temp.value, top_p=top_p.value,
                     max_new_tokens=max_t.value)
            out.value = "<i>generating…</i>"
            self.generate()

        button.on_click(on_click)
        return ui.with_text(W.VBox([pick, prompt, W.HBox([temp, top_p, max_t]), button, out]),
                                 f"[generation inspector: {len(self.sources)} checkpoints; run this cell with a "
                                 "kernel to compare answers]")


def main(argv: Sequence[str] | None = None) -> int:
    from . import config, data
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2:
        print("usage: python -m dte_lib.inspector RUN_DIR PROMPT [PRESET]")
        return 2
    cfg = config.load(argv[2] if len(argv) > 2 else None)
    persona = data.load_persona(cfg.path(cfg.data.persona))
    ins = Inspector(find_checkpoints(argv[0]), persona=persona, prompt=argv[1], system=persona["system_prompt"],
                    device=cfg.device)
    for r in ins.generate():
        print(f"--- {r['checkpoint']}: {r['answer']}\n    {({k: v for k, v in r.items() if k not in ('answer',)})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
