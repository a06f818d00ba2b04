"""Manual review of a random sample of the corpus: accept / reject / flag with a note, saved as you go.

The roadmap asks a person to read 1% of the corpus (1,000 of 100K). :func:`sample` draws it (at least ``minimum``
items, reproducible from the seed). :class:`DecisionLog` appends each decision to a JSONL file the moment it is made
(flushed and fsynced — a closed browser tab loses nothing) and reads it back on start, so a review resumes where it
stopped; a later decision on the same item overrides an earlier one. :class:`Reviewer` is the ipywidgets front end:
prompt, answer, filter flags and scores, three buttons and a note box. Every button calls :meth:`Reviewer.decide`,
which is also the headless API (scripts and tests use it, and tests click the real button objects).

Widgets do not survive in a saved notebook, so :func:`static_html` renders the sample and its decisions as an
HTML table for executed notebooks and reports.

Explained in notebook 04. Run it: ``python -m dte_lib.review outputs/runs/demo/corpus/review.jsonl`` prints the
decision counts.
"""
from __future__ import annotations

import html
import json
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from . import ui
from .data import ChatExample

DECISIONS = ("accept", "reject", "flag")


def sample(items: Sequence[Any], fraction: float = 0.01, minimum: int = 5, seed: int = 0) -> list[Any]:
    """A random ``fraction`` of the items (at least ``minimum``, at most all), kept in corpus order."""
    k = min(len(items), max(minimum, round(fraction * len(items))))
    picked = sorted(random.Random(seed).sample(range(len(items)), k))
    return [items[i] for i in picked]


class DecisionLog:
    """Append-only JSONL of decisions; ``decisions`` maps item id → latest record."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.decisions: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            lines = self.path.read_text(encoding="utf-8").splitlines()
            for n, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    if n == len(lines):
                        break  # a last line cut by a crash: that one decision is simply asked again
                    raise ValueError(f"{self.path}:{n}: corrupt decision line") from None
                self.decisions[rec["id"]] = rec

    def record(self, item_id: str, decision: str, note: str = "") -> dict[str, Any]:
        if decision not in DECISIONS:
            raise ValueError(f"decision must be one of {DECISIONS}, got {decision!r}")
        rec = {"id": item_id, "decision": decision, "note": note, "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.decisions[item_id] = rec
        return rec

    def pending(self, items: Sequence[ChatExample]) -> list[ChatExample]:
        return [ex for ex in items if ex.id not in self.decisions]

    def counts(self, items: Sequence[ChatExample] | None = None) -> dict[str, int]:
        ids = None if items is None else {ex.id for ex in items}
        c = Counter(r["decision"] for i, r in self.decisions.items() if ids is None or i in ids)
        out = {d: c.get(d, 0) for d in DECISIONS}
        if items is not None:
            out["pending"] = len(items) - sum(out.values())
        return out


def scores(ex: ChatExample, persona: dict[str, Any] | None = None, filter_cfg: Any = None) -> dict[str, Any]:
    """What the reviewer sees next to the text: the filter's flags (all of them) and a few numbers.

    The flags are the filter's verdict on the text as it stands, with the thresholds it ran with (``filter_cfg``,
    :class:`dte_lib.quality.FilterCfg`; the defaults when None): an answer the filter cut back to its last full
    sentence (``meta["trimmed_chars"]``) is checked as the trimmed text, so a clean example shows no flag.
    """
    from . import quality
    finish = ex.meta.get("finish_reason")
    trimmed = ex.meta.get("trimmed_chars")
    hits = quality.check(ex.response, prompt=ex.prompt, finish_reason="stop" if trimmed else finish,
                         persona=persona, cfg=filter_cfg)
    out = {"flags": [h[0] for h in hits], "words": len(ex.response.split()),
           "repeated_3gram_share": round(quality.repeated_ngram_share(ex.response), 3),
           "finish_reason": finish or "", "trimmed_chars": trimmed or 0}
    if persona is not None:
        out["persona_concepts"] = quality.persona_concepts(ex.response, persona)[:6]
    return out


def _finish(s: dict[str, Any]) -> str:
    if s["trimmed_chars"]:
        return f"{s['finish_reason']}, trimmed {s['trimmed_chars']} chars to its last full sentence"
    return s["finish_reason"]


def _card(ex: ChatExample, persona: dict[str, Any] | None, filter_cfg: Any = None) -> str:
    s = scores(ex, persona, filter_cfg)
    esc = html.escape
    flags = ", ".join(s["flags"]) or "none"
    concepts = ", ".join(s.get("persona_concepts", [])) or "—"
    return (f"<div style='font-family:sans-serif'><b>{esc(ex.id)}</b> · topic <i>{esc(str(ex.topic))}</i> · "
            f"{s['words']} words · finish {esc(_finish(s))} · repeated 3-grams {s['repeated_3gram_share']}"
            f"<br>filter flags: <b>{esc(flags)}</b> · persona concepts: {esc(concepts)}"
            f"<p><b>Prompt</b><br>{esc(ex.prompt)}</p>"
            f"<p><b>Answer</b><br>{esc(ex.response).replace(chr(10), '<br>')}</p></div>")


class Reviewer:
    """The review widget. ``show()`` returns the box to display; ``decide()`` is what every button calls."""

    def __init__(self, items: Sequence[ChatExample], log: DecisionLog, persona: dict[str, Any] | None = None,
                 filter_cfg: Any = None):
        import ipywidgets as w
        self.items, self.log, self.persona, self.filter_cfg = list(items), log, persona, filter_cfg
        self.body = w.HTML()
        self.status = w.HTML()
        self.note = w.Textarea(placeholder="note (optional): why, what to fix", layout=w.Layout(width="100%"))
        self.buttons = {d: w.Button(description=d.capitalize(), button_style=s)
                        for d, s in zip(DECISIONS, ("success", "danger", "warning"))}
        for d, b in self.buttons.items():
            b.on_click(lambda _btn, d=d: self.decide(d, self.note.value))
        self.skip = w.Button(description="Skip")
        self.skip.on_click(lambda _btn: self._advance(skip=True))
        self.box = w.VBox([self.status, self.body, self.note, w.HBox([*self.buttons.values(), self.skip])])
        self.index = self._next_pending(0)
        self._render()

    def _next_pending(self, start: int) -> int | None:
        order = list(range(start, len(self.items))) + list(range(0, start))
        return next((i for i in order if self.items[i].id not in self.log.decisions), None)

    @property
    def current(self) -> ChatExample | None:
        return None if self.index is None else self.items[self.index]

    def decide(self, decision: str, note: str = "") -> dict[str, Any]:
        """Record a decision on the current item and move to the next undecided one."""
        if self.current is None:
            raise RuntimeError("every item in this sample has a decision")
        rec = self.log.record(self.current.id, decision, note)
        self.note.value = ""
        self._advance()
        return rec

    def _advance(self, skip: bool = False) -> None:
        if self.index is not None:
            nxt = self._next_pending((self.index + 1) % len(self.items))
            self.index = nxt if not (skip and nxt is None) else self.index
        self._render()

    def _render(self) -> None:
        c = self.log.counts(self.items)
        self.status.value = (f"<b>{len(self.items) - c['pending']} / {len(self.items)} reviewed</b> · "
                             + " · ".join(f"{k} {v}" for k, v in c.items() if k != "pending")
                             + f" · decisions saved to <code>{html.escape(str(self.log.path))}</code>")
        if self.current is None:
            self.body.value = "<p><b>Done:</b> every item in the sample has a decision.</p>"
            for b in self.buttons.values():
                b.disabled = True
        else:
            self.body.value = _card(self.current, self.persona, self.filter_cfg)

    def show(self):
        """The widget; where it cannot be drawn (an untrusted or plain-text view) it reads as one line."""
        return ui.with_text(self.box, f"[review widget: {len(self.items)} sampled items, decisions saved to "
                                           f"{self.log.path.name}; run this cell with a kernel to review]")


def static_html(items: Sequence[ChatExample], log: DecisionLog, persona: dict[str, Any] | None = None,
                max_chars: int = 300, filter_cfg: Any = None) -> str:
    """An HTML table of the sample with flags and decisions: the widget's record in a saved notebook."""
    esc = html.escape
    rows = []
    for ex in items:
        s = scores(ex, persona, filter_cfg)
        d = log.decisions.get(ex.id, {})
        ans = ex.response if len(ex.response) <= max_chars else ex.response[:max_chars] + " …"
        rows.append(f"<tr><td>{esc(ex.id)}</td><td>{esc(str(ex.topic))}</td><td>{esc(ex.prompt[:120])}</td>"
                    f"<td>{esc(ans)}</td><td>{esc(', '.join(s['flags']) or '—')}</td>"
                    f"<td>{esc(d.get('decision', 'pending'))}</td><td>{esc(d.get('note', ''))}</td></tr>")
    c = log.counts(items)
    head = " · ".join(f"{k}: {v}" for k, v in c.items())
    return (f"<p><b>Review sample ({len(items)} items)</b> — {esc(head)}</p><table><thead><tr><th>id</th>"
            f"<th>topic</th><th>prompt</th><th>answer</th><th>filter flags</th><th>decision</th><th>note</th></tr>"
            f"</thead><tbody>{''.join(rows)}</tbody></table>")


if __name__ == "__main__":
    print(json.dumps(DecisionLog(sys.argv[1]).counts(), indent=2))
