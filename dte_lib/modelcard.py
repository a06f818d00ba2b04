"""The model card and the Ollama Modelfile written beside an exported GGUF (:mod:`dte_lib.export`).

- **README.md** — a Hugging Face model card: YAML front matter (licence, language, tags, base model) and sections
  saying what the model is, the data and how it was made, the roadmap's four success metrics on the TEST split with
  their floors and ceilings (read from the run's ``eval/dashboard.jsonl``; "not evaluated" when the run has no such
  row), its limits, its licence, and how to run it with transformers, llama.cpp and Ollama.
- **Modelfile** — Ollama's recipe: ``FROM`` the GGUF, the chat format as a Go ``TEMPLATE``, the persona's
  ``SYSTEM`` prompt, the stop tokens and the run's sampling settings.

The Go template is not translated from the Jinja chat template by hand: :func:`chat_frames` renders the model's own
template around placeholder messages and reads off the text before and after each role's content, then checks that
those frames rebuild the template's output for a multi-turn conversation (it raises where a template is not built
from such frames). The same frames give the stop tokens: the assistant turn's closing token and the token that opens
the next user turn.

Explained in notebook 11 (``notebooks/11_months10_12_refine.ipynb``, last section).
Run it: ``python -m dte_lib.modelcard MODEL_DIR`` prints the chat frames and the Modelfile template of a model.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

ROLES = ("system", "user", "assistant")
_MARK = {r: f"\x00{r.upper()}\x00" for r in ROLES}  # placeholder contents no real message holds


def chat_frames(tok) -> dict[str, tuple[str, str]]:
    """role -> (text before its content, text after it), plus ``"generation"`` -> (prompt that opens an answer, "").

    Read off the tokenizer's chat template; raises ValueError if that template does not render each turn as
    prefix + content + suffix (checked on a five-turn conversation)."""
    def render(msgs, gen=False):
        return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)

    msgs = [{"role": r, "content": _MARK[r]} for r in ROLES]
    frames: dict[str, tuple[str, str]] = {}
    done = ""
    for i, role in enumerate(ROLES):
        text = render(msgs[:i + 1])
        if not text.startswith(done) or text[len(done):].count(_MARK[role]) != 1:
            raise ValueError(f"the chat template does not render the {role} turn as prefix + content + suffix")
        before, after = text[len(done):].split(_MARK[role])
        frames[role] = (before, after)
        done = text
    user_done = render(msgs[:2])
    frames["generation"] = (render(msgs[:2], gen=True)[len(user_done):], "")
    probe = [msgs[0], {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
             {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
    if render_frames(frames, probe) != render(probe):
        raise ValueError("the chat template's turns depend on their position; no fixed Ollama template matches it")
    return frames


def render_frames(frames: dict[str, tuple[str, str]], messages: Sequence[dict[str, str]],
                  add_generation_prompt: bool = False) -> str:
    """A conversation rendered from the frames — what the Modelfile's Go template produces."""
    text = "".join(frames[m["role"] if m["role"] in frames else "user"][0] + m["content"] +
                   frames[m["role"] if m["role"] in frames else "user"][1] for m in messages)
    return text + (frames["generation"][0] if add_generation_prompt else "")


def stop_tokens(tok, frames: dict[str, tuple[str, str]]) -> list[str]:
    """Special tokens that end an answer: those closing the assistant turn and opening a user turn."""
    specials = sorted(tok.all_special_tokens, key=len, reverse=True)
    out = []
    for text in (frames["assistant"][1], frames["user"][0]):
        out += [s for s in specials if s in text and s not in out]
    return out


def go_template(frames: dict[str, tuple[str, str]]) -> str:
    """Ollama's TEMPLATE (Go text/template over ``.Messages``) equal to :func:`render_frames`; one line, no
    whitespace trimming, so the frames' own newlines stay."""
    for role, (a, b) in frames.items():
        if '"""' in a + b or "{{" in a + b:
            raise ValueError(f"the {role} frame holds text a Modelfile TEMPLATE cannot quote")
    (sa, sb), (ua, ub), (aa, ab) = frames["system"], frames["user"], frames["assistant"]
    return ('{{ range .Messages }}{{ if eq .Role "system" }}' + sa + "{{ .Content }}" + sb +
            '{{ else if eq .Role "assistant" }}' + aa + "{{ .Content }}" + ab +
            "{{ else }}" + ua + "{{ .Content }}" + ub + "{{ end }}{{ end }}" + frames["generation"][0])


def run_config(run_dir: Path | None):
    """The preset of the run (``course.json``), else the demo preset."""
    from . import config
    preset = None
    if run_dir and (run_dir / "course.json").exists():
        preset = json.loads((run_dir / "course.json").read_text(encoding="utf-8")).get("preset")
    return config.load(preset or "demo")


def sampling(cfg) -> dict[str, float]:
    """The preset's scoring sampling settings (``cfg.eval``), under Ollama's parameter names."""
    e = cfg.eval
    return {"temperature": e.temperature, "top_p": e.top_p, "repeat_penalty": e.repetition_penalty,
            "num_predict": e.max_new_tokens}


def modelfile(gguf_name: str, tok, frames, system: str, context: int, sampling: dict[str, float]) -> str:
    lines = [f"# Ollama Modelfile for {gguf_name}: ollama create deep-tree-echo -f Modelfile", f"FROM ./{gguf_name}",
             f'TEMPLATE """{go_template(frames)}"""', f'SYSTEM """{system}"""']
    lines += [f'PARAMETER stop "{s}"' for s in stop_tokens(tok, frames)]
    lines += [f"PARAMETER num_ctx {context}"]
    lines += [f"PARAMETER {k} {v:g}" for k, v in sampling.items() if not (k == "repeat_penalty" and v == 1.0)]
    return "\n".join(lines) + "\n"


def find_run_dir(model_dir: Path) -> Path | None:
    """The course run a model directory sits in (the nearest parent holding ``course.json`` or ``metrics.json``)."""
    for p in [model_dir, *model_dir.resolve().parents]:
        if (p / "course.json").exists() or (p / "metrics.json").exists():
            return p
    return None


def test_row(run_dir: Path | None, role: str) -> dict[str, Any] | None:
    """The model's TEST-split dashboard row: the teacher's, or the student's latest ``final`` row."""
    from . import dashboard
    if run_dir is None:
        return None
    rows = [r for r in dashboard.load(run_dir) if r.get("split") == "test"]
    rows = [r for r in rows if (r.get("kind") == "teacher") == (role == "teacher")]
    return rows[-1] if rows else None


def _fmt(v: Any) -> str:
    return "—" if v is None or v != v else f"{v:.3f}" if isinstance(v, float) else str(v)


def metrics_section(row: dict[str, Any] | None, cfg: Any) -> list[str]:
    from . import dashboard
    if row is None:
        return ["Not evaluated: no TEST-split row for this model in the run's `eval/dashboard.jsonl` (notebook 11 "
                "writes it). `dte metrics` scores a checkpoint on the validation split."]
    out = [f"On the course's held-out **test** split (row `{row['name']}` of `eval/dashboard.jsonl`). A floor is what "
           "an answer on the persona but to another question scores, a ceiling what the reference answers score "
           "against themselves: read the metric between them.", "",
           "| metric | value | floor | ceiling | roadmap goal | met |", "|---|---|---|---|---|---|"]
    bounds = {"perplexity": (None, None), "identity": ("identity_floor", "identity_ceiling"),
              "diversity": (None, "diversity_references"), "coherence": ("coherence_floor", "coherence_ceiling")}
    for m, (op, thr) in dashboard.thresholds(cfg).items():
        lo, hi = bounds[m]
        ok = dashboard.passes(m, row.get(m), cfg)
        out.append(f"| {m} | {_fmt(row.get(m))} | {_fmt(row.get(lo) if lo else None)} | "
                   f"{_fmt(row.get(hi) if hi else None)} | {op} {thr:g} | {'—' if ok is None else 'yes' if ok else 'no'} |")
    out += ["", f"Also: identity normalised between floor and ceiling {_fmt(row.get('identity_normalised'))}, bits "
            f"per byte {_fmt(row.get('bits_per_byte'))}, copy rate (answers copying training text) "
            f"{_fmt(row.get('copy_rate'))}; diversity's ceiling column is the reference answers' own diversity."]
    return out


def card(gguf: Path, model_dir: Path, role: str, run_dir: Path | None, exported: Any, system: str,
         frames, stops: list[str]) -> str:
    cfg_json = json.loads((model_dir / "config.json").read_text())
    cfg = run_config(run_dir)
    row = test_row(run_dir, role)
    arch, ctx = cfg_json["model_type"], cfg_json.get("n_positions") or cfg_json.get("max_position_embeddings")
    params = f"{exported.params / 1e6:.2f}M" if exported else "?"
    student = role == "student"
    base = "" if student else "base_model: HuggingFaceTB/SmolLM2-135M-Instruct\n"
    front = ("---\nlicense: apache-2.0\nlanguage:\n- en\nlibrary_name: transformers\npipeline_tag: text-generation\n"
             f"{base}tags:\n- gguf\n- {arch}\n- persona\n- deep-tree-echo\n---\n")
    what = (f"A {params}-parameter GPT-2 trained **from scratch** by the Deep Tree Echo lab course to speak as the "
            "Deep Tree Echo persona: a byte-level BPE tokenizer fitted to the course corpus with role tokens "
            "`<|system|>`, `<|user|>`, `<|echo|>` (the persona's turn) and `<|endoftext|>`, and a network grown "
            "layer by layer (notebooks 06–11)." if student else
            f"The course's **teacher**: SmolLM2-135M-Instruct ({params} parameters, Llama architecture) with a LoRA "
            "fine-tune on the persona's seed conversations merged into its weights (notebook 01). It wrote the "
            "synthetic corpus the student learned from.")
    data = ("The course's seed corpus (`data/seed_corpus.jsonl`, 268 conversations written for the project) plus "
            "the synthetic conversations the fine-tuned teacher generated from the prompt bank, quality-filtered and "
            "deduplicated (notebooks 02–04); the evaluation probes and the validation and test splits were never "
            "trained on. Training: the progressive trainer (growth from 1 layer), continued training with the "
            "identity mechanisms and a multi-task refinement; the final model was chosen on the validation split."
            if student else
            "SmolLM2-135M-Instruct (pretrained by Hugging Face on ~2T tokens) fine-tuned with LoRA on the train split "
            "of the course's seed corpus, keeping the adapter with the best validation loss, then merged.")
    dtype = exported.dtype if exported else "?"
    run_line = f" in run `{run_dir}` ({cfg.name} preset)" if run_dir else ""
    lines = [front, f"# Deep Tree Echo — {role} ({gguf.name})", "", what, "",
             f"File: `{gguf.name}` — GGUF, architecture `{arch}`, weights `{dtype}`, context {ctx} tokens, "
             f"exported by `dte export`{run_line} from `{model_dir}`. The tokenizer (vocabulary, merges, special "
             "tokens) and the chat template are inside the file.", "",
             "## Data and how it was made", "", data, "",
             "## Evaluation: the roadmap's four success metrics", "", *metrics_section(row, cfg), "",
             "## Limits", "",
             ("- Tiny and trained on a few thousand conversations at most: expect the persona's words in loosely "
              "grammatical sentences, not reliable facts or reasoning.\n"
              f"- Context is {ctx} tokens (learned positions): longer conversations must be cut; the Modelfile sets "
              "`num_ctx` to it.\n" if student else
              "- A 135M model: fluent but often wrong; it states the persona's facts in only a fraction of answers.\n")
             + "- The persona's self-description (echo state reservoirs, P-system membranes, hypergraph memory) is a "
             "character, not a description of how this transformer works.\n"
             "- English only; no safety tuning beyond the base model's; not for decisions about people.", "",
             "## Licence", "",
             ("Apache-2.0, as the course that trained it; the training data was written for the project."
              if student else
              "Apache-2.0, the licence of SmolLM2-135M-Instruct; the fine-tuning data was written for the project."),
             "", "## How to run it", "",
             "**transformers** (reads the GGUF back to a PyTorch model, dequantizing to float32):", "", "```python",
             "from transformers import AutoModelForCausalLM, AutoTokenizer", f"SYSTEM = {json.dumps(system)}",
             f'tok = AutoTokenizer.from_pretrained(".", gguf_file="{gguf.name}")',
             f'model = AutoModelForCausalLM.from_pretrained(".", gguf_file="{gguf.name}"'
             + (f", n_positions={ctx})" if arch == "gpt2" else ")"),
             f'msgs = [{{"role": "system", "content": SYSTEM}}, {{"role": "user", "content": "Who are you?"}}]',
             "ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors=\"pt\", return_dict=True)",
             "out = model.generate(**ids, max_new_tokens=60, do_sample=True, temperature=0.8)",
             'print(tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))', "```", "",
             *([f"(`n_positions={ctx}`: transformers' GGUF reader does not map `gpt2.context_length` onto GPT-2's "
                "position table and would otherwise expect 1,024 positions.)", ""] if arch == "gpt2" else []),
             "**llama.cpp** (`llama-server` speaks OpenAI's API; `dte chat --base-url` talks to it):", "", "```bash",
             f"llama-server -m {gguf.name} -c {ctx} --jinja --port 8080",
             "dte chat --base-url http://127.0.0.1:8080/v1 --model deep-tree-echo", "```", "",
             "**Ollama** (the `Modelfile` beside this card carries the chat template, the persona's system prompt, "
             f"the stop tokens {', '.join(f'`{s}`' for s in stops)} and the course's sampling settings):", "",
             "```bash", "ollama create deep-tree-echo -f Modelfile", "ollama run deep-tree-echo", "```", "",
             "The persona's system prompt (the course adds it to every conversation):", "", f"> {system}", ""]
    return "\n".join(lines)


def write(gguf: str | os.PathLike, model_dir: str | os.PathLike, *, role: str = "student",
          run_dir: str | os.PathLike | None = None, exported: Any = None) -> Path:
    """Write ``README.md`` (the model card) and ``Modelfile`` beside ``gguf``; returns the card's path."""
    from . import data
    from transformers import AutoTokenizer
    gguf, model_dir = Path(gguf), Path(model_dir)
    run = Path(run_dir) if run_dir else find_run_dir(model_dir)
    cfg = run_config(run)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    frames = chat_frames(tok)
    system = data.load_persona(cfg.path(cfg.data.persona))["system_prompt"]
    cfg_json = json.loads((model_dir / "config.json").read_text())
    ctx = cfg_json.get("n_positions") or cfg_json.get("max_position_embeddings")
    text = modelfile(gguf.name, tok, frames, system, ctx, sampling(cfg))
    data.atomic_write_text(gguf.with_name("Modelfile"), text)
    out = gguf.with_name("README.md")
    data.atomic_write_text(out, card(gguf, model_dir, role, run, exported, system, frames, stop_tokens(tok, frames)))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from transformers import AutoTokenizer
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print("usage: python -m dte_lib.modelcard MODEL_DIR")
        return 2
    tok = AutoTokenizer.from_pretrained(argv[0])
    frames = chat_frames(tok)
    for role, (a, b) in frames.items():
        print(f"{role:10s} {a!r} ... {b!r}")
    print("stop:", stop_tokens(tok, frames))
    print(go_template(frames))
    return 0


if __name__ == "__main__":
    sys.exit(main())
