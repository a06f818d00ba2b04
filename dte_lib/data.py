"""Load any chat corpus into one canonical example type, check it, split it, write it.

Formats read (detected per file, not by extension — users keep transcripts under ``.jsonl`` names):

- OpenAI chat JSONL: ``{"messages": [{"role": ..., "content": ...}, ...]}`` with optional per-message ``weight``
  (0/1), ``tool_calls``/``tools``; any other top-level keys (``id``, ``topic``, ...) are kept as metadata.
- ``{"input": ..., "output": ...}`` and ``{"prompt": ..., "completion": ...}`` JSONL (optional ``system``).
- Plain-text transcripts with chat tokens: ``<|system|> ... <|user|> ... <|echo|> ...`` (``<|assistant|>`` works
  too). Examples end at ``<|endoftext|>`` / ``<|end|>``, at a blank line followed by a role token, or — when every
  line starts with a role token and holds an assistant turn — at the end of each line. Your own tags work with a
  role map, ``roles="<|persona|>=assistant,<|record|>=record"`` (``--roles`` on the command line,
  ``$DTE_CORPUS_ROLES`` in a course run): a ``record`` (or ``start``) tag opens each example, an ``end`` tag closes
  one. An empty turn at the very start of a record opens it and is not a message, so a persona tag that both opens
  each record and marks its turns (``<|echo|><|system|> ... <|user|> ... <|echo|> ...``) reads as it is meant.
  Unknown ``<|...|>`` tags are reported once per file with a proposed mapping (:func:`propose_roles`); when most
  records fail, :func:`best_roles` tries the mappings and proposes the one that loads the most.

Stored as: UTF-8 (a BOM is dropped), UTF-16 (a BOM, or NUL bytes beside ASCII: decoded) or gzip (``my.jsonl.gz``:
decompressed as read) — :func:`open_text_bytes`. Binary files (NUL bytes: an image, an archive, a checkpoint) are
refused as a whole with one problem, not one per "line". A JSON line holding half a UTF-16 surrogate pair
(``"\\ud800"``) is one problem naming its column. When most records of a file fail for one reason,
:meth:`LoadResult.summary` says once that the format looks misread and what to try, then shows a few examples and
a count.

Bad input never disappears silently: each malformed line becomes a :class:`Problem` with ``file:line``, what is
wrong and how to fix it, and :class:`LoadResult` always says how many examples were kept and rejected. The table of
cases lives in docs/DATA.md and in tests/test_data.py.

The lowest layer of the library: it imports no other ``dte_lib`` module (docs/ARCHITECTURE.md, "Layers"); its
command line, ``dte data``, lives in :mod:`dte_lib.datacheck`.
Explained in notebook 00 (the tour) and used by every later notebook.
Run it: ``dte data check data/seed_corpus.jsonl`` (or ``python -m dte_lib.datacheck check FILE``).
"""
from __future__ import annotations

import bisect
import gzip
import hashlib
import io
import json
import os
import re
import tempfile
import unicodedata
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Sequence

ROLES = ("system", "user", "assistant", "tool")
ROLE_ALIASES = {"echo": "assistant", "bot": "assistant", "model": "assistant", "ai": "assistant",
                "gpt": "assistant", "human": "user", "person": "user", "developer": "system"}
CHAT_TOKEN = re.compile(r"<\|(system|user|assistant|echo|endoftext|end)\|>")
END_TOKENS = ("endoftext", "end")
ANY_TAG = re.compile(r"<\|[A-Za-z0-9_.:/ -]{1,40}\|>")  # any chat-style tag, known or not
TAG_ROLES = ROLES + ("record", "end")  # what --roles may map a tag to; "start" is an alias of "record"
DEFAULT_TAGS = {"<|system|>": "system", "<|user|>": "user", "<|assistant|>": "assistant", "<|echo|>": "assistant",
                "<|tool|>": "tool", "<|endoftext|>": "end", "<|end|>": "end",
                **{f"<|{k}|>": v for k, v in ROLE_ALIASES.items()}}
ROLES_ENV = "DTE_CORPUS_ROLES"  # `dte course run --roles` passes the role map to the notebooks through this
DEFAULT_MAX_LINE_BYTES = 1_000_000


# ---------------------------------------------------------------------------------------------- types
@dataclass
class ChatExample:
    """One conversation. ``messages`` are OpenAI-shaped dicts: role, content, and optional weight/tool_calls."""
    messages: list[dict[str, Any]]
    id: str = ""
    meta: dict[str, Any] = field(default_factory=dict)  # topic and any other keys the source carried
    source: str = ""  # "file:line" it came from

    def __post_init__(self) -> None:
        if not self.id:
            self.id = "ex-" + content_hash(self.messages)[:12]

    @property
    def topic(self) -> str | None:
        return self.meta.get("topic")

    @property
    def system(self) -> str | None:
        return next((m["content"] for m in self.messages if m["role"] == "system"), None)

    @property
    def prompt(self) -> str:
        """The first user turn (what generation and evaluation call 'the prompt')."""
        return next((m["content"] for m in self.messages if m["role"] == "user"), "")

    @property
    def response(self) -> str:
        """The last assistant turn."""
        return next((m["content"] or "" for m in reversed(self.messages) if m["role"] == "assistant"), "")

    def assistant_text(self) -> str:
        return "\n".join(m["content"] or "" for m in self.messages if m["role"] == "assistant")

    def to_json(self) -> dict[str, Any]:
        """The OpenAI chat shape plus ``id`` and metadata keys, as written to JSONL."""
        return {"id": self.id, **self.meta, "messages": self.messages}


@dataclass
class Problem:
    """One thing wrong with the input, located to a line."""
    path: str
    line: int  # 1-based; 0 means the whole file
    code: str  # stable key, e.g. "invalid_json", "unknown_role"
    message: str  # what is wrong
    hint: str  # how to fix it

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.message} — fix: {self.hint}"


class CorpusError(ValueError):
    """Raised by ``load_corpus(..., strict=True)`` when any line is malformed; lists every problem."""

    def __init__(self, problems: list[Problem], kept: int):
        self.problems = problems
        self.kept = kept
        shown = "\n".join(f"  {p}" for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__(f"{len(problems)} malformed record(s), {kept} example(s) valid:\n{shown}{more}")

    def one_line(self) -> str:
        first = self.problems[0] if self.problems else None
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        files = sorted({p.path for p in self.problems})
        return (f"{len(self.problems)} malformed record(s), {self.kept} valid; first: {first}{more}. "
                f"See them all: dte data check {' '.join(files)}")


@dataclass
class LoadResult:
    examples: list[ChatExample]
    problems: list[Problem]
    formats: dict[str, str]  # path -> detected format
    proposals: dict[str, str] = field(default_factory=dict)  # path -> a --roles value to try (unknown tags seen)

    @property
    def kept(self) -> int:
        return len(self.examples)

    @property
    def rejected(self) -> int:
        return len(self.problems)

    def misread(self) -> dict[str, dict[str, Any]]:
        """Files where most records fail for one reason: path -> {code, count, records, advice}."""
        out = {}
        for path in self.formats:
            probs = [p for p in self.problems if p.path == path]
            if len(probs) < 3:
                continue
            kept = sum(1 for ex in self.examples if ex.source.rsplit(":", 1)[0] == path)
            code, count = Counter(p.code for p in probs).most_common(1)[0]
            if count / (count + kept) <= 0.5:
                continue
            advice = ("try: dte data check " + path + f" --roles '{self.proposals[path]}'"
                      if path in self.proposals else probs[0].hint)
            out[path] = {"code": code, "count": count, "records": len(probs) + kept, "advice": advice}
        return out

    def summary(self, show: int = 5, all_problems: bool = False) -> str:
        """Counts and formats, then problems grouped by code: the first ``show`` of each and a count of the rest
        (``all_problems`` lists every one). A file whose records mostly fail for one reason gets one line saying
        the format looks misread and what to try."""
        lines = [f"kept {self.kept} example(s), rejected {self.rejected} record(s)"]
        for path, fmt in self.formats.items():
            lines.append(f"  {path}: {fmt}")
        for path, m in self.misread().items():
            lines.append(f"  {path}: {m['count']} of {m['records']} records fail the same way ({m['code']}): "
                         f"the format looks misread — {m['advice']}")
        for path, proposal in self.proposals.items():
            if path not in self.misread():
                lines.append(f"  {path}: unknown tags; proposed mapping: --roles '{proposal}'")
        by_code: dict[str, list[Problem]] = defaultdict(list)
        for p in self.problems:
            by_code[p.code].append(p)
        for code, probs in by_code.items():
            limit = len(probs) if all_problems else show
            lines += [f"  {p}" for p in probs[:limit]]
            if len(probs) > limit:
                lines.append(f"  ... and {len(probs) - limit} more {code} problem(s) like these (all: --all)")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- normalise
_INVISIBLE = dict.fromkeys(map(ord, "\ufeff\u200b\u200c\u200d\u2060"), None)


def normalize_text(text: str) -> str:
    """CRLF/CR → LF, drop BOM and zero-width characters, NFC, strip trailing spaces per line and the ends."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").translate(_INVISIBLE)
    text = unicodedata.normalize("NFC", text)
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return text.strip()


def content_hash(messages: Sequence[dict[str, Any]]) -> str:
    """Hash of roles and normalised contents: equal for exact duplicates, whatever their ids or metadata."""
    h = hashlib.sha256()
    for m in messages:
        h.update(m.get("role", "").encode())
        h.update(b"\x00")
        h.update(normalize_text(m.get("content") or "").encode())
        h.update(b"\x01")
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- checks
def _suggest_role(role: str) -> str:
    alias = ROLE_ALIASES.get(role.strip().lower())
    if alias:
        return f"rename role {role!r} to {alias!r}"
    return f"use one of {', '.join(ROLES)}"


def check_messages(messages: Any) -> tuple[list[dict[str, Any]] | None, str, str, str]:
    """Validate and normalise a messages list. Returns (messages, code, message, hint); messages is None if bad."""
    if not isinstance(messages, list):
        return None, "messages_not_list", f"'messages' is {type(messages).__name__}, not a list", \
            'write "messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]'
    if not messages:
        return None, "empty_messages", "'messages' is empty", "add at least a user and an assistant message"
    out = []
    for i, m in enumerate(messages):
        where = f"message {i}"
        if not isinstance(m, dict):
            return None, "message_not_object", f"{where} is {type(m).__name__}, not an object", \
                'each message is {"role": ..., "content": ...}'
        if "role" not in m:
            return None, "message_missing_key", f"{where} has no 'role'", 'add "role": "user" / "assistant" / "system"'
        role = m["role"]
        if not isinstance(role, str) or role not in ROLES:
            return None, "unknown_role", f"{where} has unknown role {role!r}", _suggest_role(str(role))
        has_tools = role == "assistant" and bool(m.get("tool_calls") or m.get("function_call"))
        if "content" not in m and not has_tools:
            return None, "message_missing_key", f"{where} ({role}) has no 'content'", 'add "content": "..."'
        content = m.get("content")
        if content is None and has_tools:
            pass
        elif not isinstance(content, str):
            return None, "content_not_string", \
                f"{where} ({role}) content is {type(content).__name__}, not a string", \
                "content must be plain text; join lists of parts into one string"
        elif not normalize_text(content):
            return None, "empty_content", f"{where} ({role}) content is empty", \
                "remove the message or write its text"
        if "weight" in m and m["weight"] not in (0, 1):
            return None, "invalid_weight", f"{where} has weight {m['weight']!r}", \
                "weight is 0 (do not train on this turn) or 1"
        clean = dict(m)
        if isinstance(content, str):
            clean["content"] = normalize_text(content)
        out.append(clean)
    if not any(m["role"] == "assistant" for m in out):
        return None, "no_assistant_turn", "no assistant message: nothing to learn from", \
            "add the answer as a message with role 'assistant' (or '<|echo|>' in transcripts)"
    return out, "", "", ""


def _record_to_example(obj: Any, source: str) -> tuple[ChatExample | None, str, str, str]:
    if not isinstance(obj, dict):
        return None, "not_an_object", f"line is a JSON {type(obj).__name__}, not an object", \
            'write one object per line, e.g. {"messages": [...]}'
    meta = {}
    if "messages" in obj:
        msgs, code, msg, hint = check_messages(obj["messages"])
        if msgs is None:
            return None, code, msg, hint
        meta = {k: v for k, v in obj.items() if k not in ("messages", "id")}
    elif "input" in obj or "output" in obj:
        msgs, code, msg, hint = _pair(obj, "input", "output")
        if msgs is None:
            return None, code, msg, hint
        meta = {k: v for k, v in obj.items() if k not in ("input", "output", "system", "id")}
    elif "prompt" in obj or "completion" in obj:
        msgs, code, msg, hint = _pair(obj, "prompt", "completion")
        if msgs is None:
            return None, code, msg, hint
        meta = {k: v for k, v in obj.items() if k not in ("prompt", "completion", "system", "id")}
    else:
        keys = ", ".join(sorted(obj)) or "none"
        return None, "unknown_format", f"no 'messages', 'input'/'output' or 'prompt'/'completion' key (keys: {keys})", \
            'use {"messages": [...]} (OpenAI chat), {"input", "output"} or {"prompt", "completion"}'
    ex_id = obj.get("id")
    return ChatExample(messages=msgs, id=str(ex_id) if ex_id not in (None, "") else "", meta=meta,
                       source=source), "", "", ""


def _pair(obj: dict, ask: str, answer: str):
    for key in (ask, answer):
        if key not in obj:
            return None, "missing_key", f"has {answer if key == ask else ask!r} but no {key!r}", \
                f'add "{key}": "..." to the object'
    msgs = []
    if obj.get("system") is not None:
        msgs.append({"role": "system", "content": obj["system"]})
    msgs += [{"role": "user", "content": obj[ask]}, {"role": "assistant", "content": obj[answer]}]
    return check_messages(msgs)


# ---------------------------------------------------------------------------------------------- readers
def encoding_of(path: str | os.PathLike) -> str:
    """How the file's text is stored: ``gzip`` (read through :mod:`gzip`), ``utf-16-le`` / ``utf-16-be`` (a BOM, or
    ASCII text with a NUL byte beside every character), else ``utf-8``."""
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16-le" if head.startswith(b"\xff\xfe") else "utf-16-be"
    pairs = len(head) // 2
    if pairs >= 4:
        even, odd = head[0:2 * pairs:2].count(0), head[1:2 * pairs:2].count(0)
        if odd >= 0.9 * pairs and even < 0.1 * pairs:
            return "utf-16-le"
        if even >= 0.9 * pairs and odd < 0.1 * pairs:
            return "utf-16-be"
    return "utf-8"


def open_text_bytes(path: str | os.PathLike) -> IO[bytes]:
    """The file's content as UTF-8 bytes, whatever :func:`encoding_of` says it is stored as (gzip is decompressed
    as it is read; UTF-16 is decoded once). Raises :class:`CorpusError` for a UTF-16 file that does not decode."""
    enc = encoding_of(path)
    if enc == "gzip":
        return gzip.open(path, "rb")
    if enc.startswith("utf-16"):
        raw = Path(path).read_bytes()
        try:
            text = raw.decode("utf-16" if raw.startswith((b"\xff\xfe", b"\xfe\xff")) else enc)
        except UnicodeDecodeError as e:
            problem = Problem(str(path), 0, "bad_utf16", f"looks like UTF-16 but does not decode ({e.reason} at "
                              f"byte {e.start})", "re-save it as UTF-8 (iconv -f utf-16 -t utf-8 IN > OUT)")
            raise CorpusError([problem], 0) from None
        return io.BytesIO(text.encode("utf-8"))
    return open(path, "rb")


def _iter_lines(path: Path, max_line_bytes: int) -> Iterator[tuple[int, str | None, Problem | None]]:
    """Yield (line number, decoded text or None, problem or None) for each line, in binary-safe fashion."""
    with open_text_bytes(path) as fh:
        n = 0
        lines = iter(fh)
        while True:
            try:
                raw = next(lines)
            except StopIteration:
                return
            except (EOFError, OSError, zlib.error) as e:  # a truncated or corrupt gzip stream
                yield n + 1, None, Problem(str(path), n + 1, "bad_gzip",
                                           f"the gzip stream breaks off after line {n} ({e})",
                                           "download or compress the file again (gzip -t FILE tests it)")
                return
            n += 1
            if len(raw) > max_line_bytes:
                yield n, None, Problem(str(path), n, "line_too_long",
                                       f"line is {len(raw):,} bytes, over the {max_line_bytes:,}-byte limit",
                                       "split it: one example per line (is the whole file on one line?), "
                                       "or raise data.max_line_bytes")
                continue
            if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield n, None, Problem(str(path), n, "not_utf8",
                                       f"not valid UTF-8 at byte {e.start} (0x{raw[e.start]:02x})",
                                       "re-save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 IN > OUT`")
                continue
            yield n, text.rstrip("\r\n"), None


# ---------------------------------------------------------------------------------------------- role maps
def parse_roles(spec: str | dict[str, str] | None) -> dict[str, str]:
    """``"TAG=ROLE,TAG=ROLE"`` (or a dict) → {literal tag: role}. A bare name ``persona`` means the tag
    ``<|persona|>``; anything else (``[Q]``, ``### Answer:``) is matched literally. Roles: system, user, assistant,
    tool, ``record`` (alias ``start``: the tag opens an example and holds no text) and ``end`` (closes one).
    Raises ValueError naming the bad entry and the fix."""
    if not spec:
        return {}
    items = spec.items() if isinstance(spec, dict) else []
    if isinstance(spec, str):
        parsed = []
        for part in filter(None, (x.strip() for x in spec.split(","))):
            if "=" not in part:
                raise ValueError(f"--roles entry {part!r} has no '=': write TAG=ROLE, e.g. "
                                 "'<|persona|>=assistant,<|record|>=record'")
            tag, role = part.rsplit("=", 1)
            parsed.append((tag, role))
        items = parsed
    out = {}
    for tag, role in items:
        tag, role = tag.strip(), role.strip().lower()
        role = {"start": "record", "begin": "record", "stop": "end"}.get(role, ROLE_ALIASES.get(role, role))
        if role not in TAG_ROLES:
            raise ValueError(f"--roles {tag}={role}: unknown role {role!r}; use one of {', '.join(TAG_ROLES)} "
                             "(record = the tag opens each example)")
        if not tag:
            raise ValueError(f"--roles ={role}: empty tag; write TAG=ROLE, e.g. '<|persona|>={role}'")
        out[_tag_literal(tag)] = role
    return out


def _tag_literal(tag: str) -> str:
    return f"<|{tag}|>" if re.fullmatch(r"[A-Za-z0-9_.:-]+", tag) else tag


def roles_from_env() -> dict[str, str]:
    return parse_roles(os.environ.get(ROLES_ENV) or None)


def format_roles(mapping: dict[str, str]) -> str:
    return ",".join(f"{tag}={role}" for tag, role in mapping.items())


def _tag_map(roles: dict[str, str] | None) -> dict[str, str]:
    return {**DEFAULT_TAGS, **(roles or {})}


def _tag_regex(tags: dict[str, str]) -> re.Pattern:
    literal = "|".join(re.escape(t) for t in sorted(tags, key=len, reverse=True))
    return re.compile(f"(?:{literal})|{ANY_TAG.pattern}")


_ROLE_WORDS = [  # name fragments that suggest a role for a tag with text after it (first match wins)
    ("system", r"sys|instruction|context|setup"),
    ("user", r"user|human|^person$|question|prompt|customer|visitor|guest|^ask|^q$|^in(put)?$"),
    ("assistant", r"assist|bot$|^ai$|model|answer|response|reply|gpt|^a$|^out(put)?$"),
]


def propose_roles(text: str, roles: dict[str, str] | None = None) -> dict[str, str]:
    """A role for each unknown ``<|...|>`` tag in ``text`` (empty dict when every tag is known).

    Evidence, in order: a tag with no text after it that comes first → ``record`` (one after an answer →
    ``end``); a name that says its role (``human`` → user, ``reply`` → assistant); position — a tag that follows
    user turns is the answer (``assistant``), one that follows answers is the next ``user`` turn."""
    tags = _tag_map(roles)
    rx = _tag_regex(tags)
    found = list(rx.finditer(text))
    unknown = [m.group(0) for m in found if m.group(0) not in tags]
    if not unknown:
        return {}
    stats: dict[str, dict[str, int]] = {}
    for i, m in enumerate(found):
        tag = m.group(0)
        if tag in tags:
            continue
        st = stats.setdefault(tag, Counter())
        st["n"] += 1
        end = found[i + 1].start() if i + 1 < len(found) else len(text)
        st["empty"] += not text[m.end():end].strip()
        st["first"] += i == 0
        st["last"] += i == len(found) - 1
        prev = tags.get(found[i - 1].group(0), found[i - 1].group(0)) if i else "start"
        nxt = tags.get(found[i + 1].group(0), found[i + 1].group(0)) if i + 1 < len(found) else "eof"
        st["after_" + prev] += 1
        st["before_" + nxt] += 1
    proposal: dict[str, str] = {}
    assigned = set(tags[m.group(0)] for m in found if m.group(0) in tags)
    for tag, st in sorted(stats.items(), key=lambda kv: -kv[1]["n"]):
        name = tag[2:-2].lower() if tag.startswith("<|") else tag.lower()
        role = None
        if st["empty"] >= 0.9 * st["n"]:
            role = "end" if st["last"] and not st["first"] else "record"
        if role is None:
            role = next((r for r, pat in _ROLE_WORDS if re.search(pat, name)), None)
        if role is None:
            if st["after_user"] >= st["n"] / 2 or "assistant" not in assigned:
                role = "assistant"
            elif st["after_assistant"] >= st["n"] / 2 or "user" not in assigned:
                role = "user"
            else:
                role = "system"
        proposal[tag] = role
        assigned.add(role)
    return proposal


_MAGIC = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image", b"%PDF": "a PDF",
          b"PK\x03\x04": "a zip archive (or .xlsx/.docx)", b"\x1f\x8b": "a gzip archive", b"BZh": "a bzip2 archive",
          b"\x28\xb5\x2f\xfd": "a zstd archive", b"\x80\x02": "a Python pickle", b"\x80\x04": "a Python pickle",
          b"SQLite format 3": "an SQLite database", b"PAR1": "a Parquet file", b"\x7fELF": "an executable"}


def binary_problem(path: Path) -> Problem | None:
    """A single ``binary_file`` problem when the file's first 64 KiB hold NUL bytes or are mostly undecodable
    (read as :func:`open_text_bytes` reads it: a gzip file's content, a UTF-16 file's text); ``bad_gzip`` /
    ``bad_utf16`` when it cannot be read that way."""
    try:
        with open_text_bytes(path) as fh:
            head = fh.read(1 << 16)
    except CorpusError as e:
        return e.problems[0]
    except (EOFError, OSError, zlib.error) as e:
        return Problem(str(path), 0, "bad_gzip", f"a gzip file that does not decompress ({e})",
                       "download or compress the file again (gzip -t FILE tests it)")
    kind = next((name for magic, name in _MAGIC.items() if head.startswith(magic)), None)
    nul = head.find(b"\x00")
    if kind is None and nul < 0:
        lines = head.split(b"\n")[:50]
        bad = 0
        for ln in lines:
            try:
                ln.decode("utf-8")
            except UnicodeDecodeError:
                bad += 1
        if bad < max(3, len(lines) // 2):  # a few bad lines: reported one by one as not_utf8
            return None
    what = kind or (f"NUL byte at offset {nul}" if nul >= 0 else "most lines are not text in any UTF-8 sense")
    inside = " inside the gzip file" if encoding_of(path) == "gzip" else ""
    hint = "pass a UTF-8 text file: JSONL ({\"messages\": [...]} per line) or a <|user|>/<|echo|> transcript"
    if nul >= 0 and kind is None:
        hint += " (UTF-16 or UTF-32 text? convert it: iconv -f utf-16 -t utf-8 IN > OUT)"
    return Problem(str(path), 0, "binary_file", f"binary file ({what}{inside}), not a text corpus", hint)


def detect_format(path: Path, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
                  roles: dict[str, str] | None = None) -> str:
    """'jsonl', 'transcript', 'json_array', 'empty' or 'plain_text', from the file's first non-blank line."""
    for _, text, problem in _iter_lines(path, max_line_bytes):
        if problem is not None:
            return "jsonl"  # let the JSONL reader report the bad line where it is
        if text.strip():
            first = text.lstrip()
            if roles and any(first.startswith(tag) for tag in roles):
                return "transcript"
            if first.startswith("{"):
                return "jsonl"
            if first.startswith("["):
                return "json_array"
            break
    else:
        return "empty"
    with open_text_bytes(path) as fh:
        head = fh.read(1 << 20).decode("utf-8", errors="replace")
    return "transcript" if _tag_regex(_tag_map(roles)).search(head) else "plain_text"


_SURROGATE_ESCAPE = re.compile(r"\\u(d[89ab][0-9a-f]{2})(\\u(d[c-f][0-9a-f]{2}))?|\\u(d[c-f][0-9a-f]{2})", re.I)
_SURROGATE = re.compile("[\ud800-\udfff]")


def _strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def _lone_surrogate(line: str, obj: Any) -> str:
    """What is wrong when a JSON line's strings hold half of a UTF-16 surrogate pair (``"\\ud800"`` alone), which
    no text encoding can write; empty when none. A pair (``"\\ud83d\\ude00"``) is one character and fine."""
    if "\\u" not in line or not any(_SURROGATE.search(t) for t in _strings(obj)):
        return ""
    for m in _SURROGATE_ESCAPE.finditer(line):
        if m.group(4) or not m.group(2):
            half = (m.group(1) or m.group(4)).lower()
            return f"lone UTF-16 surrogate \\u{half} at column {m.start() + 1}: half a character"
    return "lone UTF-16 surrogate in a string: half a character"


def read_jsonl(path: Path, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES, roles: dict[str, str] | None = None
               ) -> tuple[list[ChatExample], list[Problem]]:
    examples, problems = [], []
    names = {t[2:-2]: r for t, r in (roles or {}).items() if t.startswith("<|") and r in ROLES}
    for n, text, problem in _iter_lines(path, max_line_bytes):
        if problem:
            problems.append(problem)
            continue
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            hint = "each line must be one complete JSON object; check quotes, commas and brackets"
            if not text.lstrip().startswith(("{", "[")):
                hint = "this line is not JSON at all: remove it, or convert the file (plain text is not JSONL)"
            problems.append(Problem(str(path), n, "invalid_json", f"invalid JSON ({e.msg} at column {e.colno})",
                                    hint))
            continue
        lone = _lone_surrogate(text, obj)
        if lone:
            problems.append(Problem(str(path), n, "lone_surrogate", lone,
                                    "the tool that wrote this line cut a character (an emoji?) in half: export it "
                                    "again, or delete that \\u escape"))
            continue
        if names and isinstance(obj, dict) and isinstance(obj.get("messages"), list):
            obj = {**obj, "messages": [{**m, "role": names.get(m.get("role"), m.get("role"))}
                                       if isinstance(m, dict) else m for m in obj["messages"]]}
        ex, code, msg, hint = _record_to_example(obj, f"{path}:{n}")
        if ex is None:
            problems.append(Problem(str(path), n, code, msg, hint))
        else:
            examples.append(ex)
    return examples, problems


def read_transcripts(path: Path, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES, roles: dict[str, str] | None = None
                     ) -> tuple[list[ChatExample], list[Problem], dict[str, str]]:
    """Parse tagged transcripts (see the module docstring for where examples end).

    Returns (examples, problems, proposal): ``proposal`` maps tags to the roles to try (empty when there is nothing
    to propose) — a guessed role for each unknown tag, and, when most records fail, the mapping
    :func:`best_roles` found to load the most of them. Records holding an unknown tag are rejected with the
    proposal in their hint."""
    texts: list[str] = []
    line_problems: list[Problem] = []
    for n, text, problem in _iter_lines(path, max_line_bytes):
        if problem:
            line_problems.append(problem)
            texts.append("")
        else:
            texts.append(text)
    examples, problems, proposal = _transcripts(str(path), texts, roles)
    if len(problems) > len(examples):  # most records fail: search for the mapping that loads the most
        best = best_roles(str(path), texts, roles, proposal)
        if best != {**(roles or {}), **proposal}:
            proposal = {t: r for t, r in best.items() if (roles or {}).get(t) != r}
            for p in problems:
                if p.code == "unknown_tag":
                    p.hint = _roles_hint({**(roles or {}), **proposal})
    return examples, line_problems + problems, proposal


def _roles_hint(mapping: dict[str, str]) -> str:
    return f"map your tags to roles: --roles '{format_roles(mapping)}' (roles: {', '.join(TAG_ROLES)})"


SEARCH_CHARS = 200_000  # best_roles tries its mappings on the file's first records, up to this many characters


def best_roles(path: str, texts: Sequence[str], roles: dict[str, str] | None, proposal: dict[str, str]
               ) -> dict[str, str]:
    """The role map (``roles`` with changes) that loads the most records of a transcript file's first
    ``SEARCH_CHARS`` characters: starting from ``roles`` plus the guessed ``proposal``, each tag seen (the 8 most
    frequent) is tried in every role, a change kept when more records load, until no change helps. Returns the
    start unchanged when nothing loads more."""
    sample: list[str] = []
    size = 0
    for t in texts:
        sample.append(t)
        size += len(t) + 1
        if size > SEARCH_CHARS:
            break
    seen = Counter(m.group(0) for m in _tag_regex(_tag_map(roles)).finditer("\n".join(sample)))

    def loaded(mapping: dict[str, str]) -> int:
        return len(_transcripts(path, sample, mapping, propose=False)[0])

    best = {**(roles or {}), **proposal}
    most = loaded(best)
    for _ in range(3):
        improved = False
        for tag, _n in seen.most_common(8):
            for role in TAG_ROLES:
                if role == _tag_map(best).get(tag):
                    continue
                n = loaded({**best, tag: role})
                if n > most:
                    best, most, improved = {**best, tag: role}, n, True
        if not improved:
            break
    return best


def _transcripts(path: str, texts: Sequence[str], roles: dict[str, str] | None, propose: bool = True
                 ) -> tuple[list[ChatExample], list[Problem], dict[str, str]]:
    """Examples and problems from a transcript file's lines under one role map (:func:`read_transcripts`)."""
    full = "\n".join(texts)
    starts = [0]
    for t in texts[:-1]:
        starts.append(starts[-1] + len(t) + 1)
    tags = _tag_map(roles)
    rx = _tag_regex(tags)
    proposal = propose_roles(full, roles) if propose else {}
    guess = {**tags, **proposal}  # chunking uses the guesses too, so each misread record is reported once
    found = list(rx.finditer(full))

    def line_of(pos: int) -> int:
        return bisect.bisect_right(starts, pos)

    cuts: list[int] = [0]  # positions where a new example starts
    record_tags = [m for m in found if guess.get(m.group(0)) == "record"]
    nonblank = [t for t in texts if t.strip()]
    if record_tags:
        cuts += [m.start() for m in record_tags]
    elif nonblank and all(rx.match(t.lstrip()) and any(guess.get(m.group(0)) == "assistant" for m in rx.finditer(t))
                          for t in nonblank):
        cuts += [starts[i] for i in range(len(texts))]
    else:
        for i in range(1, len(texts)):
            if not texts[i - 1].strip() and rx.match(texts[i].lstrip()):
                cuts.append(starts[i])
    cuts += [m.end() for m in found if guess.get(m.group(0)) == "end"]
    cuts = sorted(set(cuts)) + [len(full)]
    examples, problems = [], []
    for a, b in zip(cuts, cuts[1:]):
        piece = full[a:b]
        if not piece.strip():
            continue
        lead = len(piece) - len(piece.lstrip())
        line_no = line_of(a + lead)
        ex, code, msg, hint = _parse_transcript(piece, f"{path}:{line_no}", tags, rx)
        if ex is None:
            if code == "unknown_tag":
                hint = _roles_hint({**(roles or {}), **proposal})
            problems.append(Problem(path, line_no, code, msg, hint))
        else:
            examples.append(ex)
    return examples, problems, proposal


def _parse_transcript(text: str, source: str, tags: dict[str, str] | None = None, rx: re.Pattern | None = None
                      ) -> tuple[ChatExample | None, str, str, str]:
    tags = tags or DEFAULT_TAGS
    rx = rx or _tag_regex(tags)
    found = [m for m in rx.finditer(text)]
    unknown = list(dict.fromkeys(m.group(0) for m in found if m.group(0) not in tags))
    if unknown:
        return None, "unknown_tag", f"unknown tag{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}", ""
    tokens = [m for m in found if tags[m.group(0)] in ROLES]
    if not tokens:
        return None, "no_chat_tokens", "text without any <|role|> token", \
            "start each turn with <|system|>, <|user|> or <|echo|> (or <|assistant|>), or map your own tags " \
            "with --roles"
    before = rx.sub("", text[:tokens[0].start()]).strip()
    if before:
        return None, "text_before_first_token", f"text before the first role token: {before[:40]!r}", \
            "begin the transcript with a role token such as <|user|>"
    msgs, tag_of = [], []
    for i, m in enumerate(tokens):
        end = tokens[i + 1].start() if i + 1 < len(tokens) else len(text)
        content = rx.sub("", text[m.end():end])  # a record/end tag inside a turn holds no text
        if not msgs and not content.strip() and i + 1 < len(tokens):
            continue  # an empty turn at the very start opens the record (`<|echo|><|system|> ...`): not a message
        msgs.append({"role": tags[m.group(0)], "content": content})
        tag_of.append(m.group(0))
    msgs, code, msg, hint = check_messages(msgs)
    if msgs is None:
        if code == "empty_content":  # name the tag, and a fix that fits a transcript
            k = int(re.search(r"message (\d+)", msg).group(1))
            hint = f"write the turn's text after its {tag_of[k]} tag, or remove the tag"
        return None, code, msg, hint
    return ChatExample(messages=msgs, source=source), "", "", ""


def load_file(path: str | os.PathLike, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
              roles: dict[str, str] | None = None) -> LoadResult:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file — check the path")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory with no *.jsonl, *.txt or *.json file in it")
    fmt = "empty" if path.stat().st_size == 0 else None
    binary = binary_problem(path) if fmt is None else None
    proposal: dict[str, str] = {}
    if binary:
        return LoadResult([], [binary], {str(path): "binary"})
    fmt = fmt or detect_format(path, max_line_bytes, roles)
    if fmt == "jsonl":
        examples, problems = read_jsonl(path, max_line_bytes, roles)
    elif fmt == "transcript":
        examples, problems, proposal = read_transcripts(path, max_line_bytes, roles)
    elif fmt == "empty":
        examples, problems = [], [Problem(str(path), 0, "empty_file", "the file is empty (or only blank lines)",
                                          "check the path; a corpus needs at least one example")]
    elif fmt == "json_array":
        examples, problems = [], [Problem(str(path), 1, "json_array",
                                          "the file is one JSON array, not JSON Lines",
                                          "write one object per line (python: for ex in data: print(json.dumps(ex)))")]
    else:
        examples, problems = [], [Problem(str(path), 1, "plain_text",
                                          "plain text with no JSON objects and no chat tokens",
                                          "use JSONL ({\"messages\": [...]} per line) or mark turns with "
                                          "<|user|> and <|echo|> (your own tags: --roles)")]
    proposals = {str(path): format_roles({**(roles or {}), **proposal})} if proposal else {}
    enc = encoding_of(path) if fmt != "empty" else "utf-8"
    label = fmt if enc == "utf-8" else f"{fmt}, {enc if enc == 'gzip' else enc.upper()}"  # e.g. "jsonl, gzip"
    return LoadResult(examples, problems, {str(path): label}, proposals)


CORPUS_SUFFIXES = (".jsonl", ".txt", ".json")  # what a directory given as a corpus is read for (also gzipped: .gz)


def corpus_files(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """The files a corpus argument names: each file as given, each directory's ``*.jsonl``/``*.txt``/``*.json``
    (and the same ending in ``.gz``), sorted."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            inside = sorted(q for q in p.iterdir() if q.is_file() and
                            (q.suffix in CORPUS_SUFFIXES or "".join(q.suffixes[-2:]) in
                             tuple(x + ".gz" for x in CORPUS_SUFFIXES)))
            if not inside:
                raise IsADirectoryError(f"{p} is a directory with no *.jsonl, *.txt or *.json file in it")
            files += inside
        else:
            files.append(p)
    return files


def load_corpus(paths: str | os.PathLike | Iterable[str | os.PathLike], *, strict: bool = False,
                max_line_bytes: int = DEFAULT_MAX_LINE_BYTES, roles: str | dict[str, str] | None = None
                ) -> LoadResult:
    """Load one or more files (or directories of ``*.jsonl``/``*.txt``) into a :class:`LoadResult`.

    ``roles``: your transcript tags, ``"TAG=ROLE,..."`` or a dict (:func:`parse_roles`); ``None`` reads
    ``$DTE_CORPUS_ROLES`` (set by ``dte course run --roles``). ``strict=True`` raises :class:`CorpusError`
    listing every problem if any record is malformed.
    """
    role_map = parse_roles(roles) if roles is not None else roles_from_env()
    result = LoadResult([], [], {})
    for f in corpus_files(paths):
        r = load_file(f, max_line_bytes, role_map)
        result.examples += r.examples
        result.problems += r.problems
        result.formats.update(r.formats)
        result.proposals.update(r.proposals)
    if strict and result.problems:
        raise CorpusError(result.problems, result.kept)
    return result


# ---------------------------------------------------------------------------------------------- duplicates
def exact_duplicates(examples: Sequence[ChatExample]) -> list[list[ChatExample]]:
    """Groups (size ≥ 2) of examples whose roles and normalised texts are identical."""
    groups: dict[str, list[ChatExample]] = defaultdict(list)
    for ex in examples:
        groups[content_hash(ex.messages)].append(ex)
    return [g for g in groups.values() if len(g) > 1]


def shingles(text: str, n: int = 5) -> set[str]:
    """Word n-grams of lower-cased text (the whole text if it is shorter than n words)."""
    words = re.findall(r"\w+", text.lower())
    if len(words) < n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def near_duplicate_pairs(texts: Sequence[str], threshold: float = 0.5, n: int = 5
                         ) -> list[tuple[int, int, float]]:
    """Exact pairwise Jaccard similarity of word-n-gram sets; pairs at or above ``threshold``.

    Quadratic: fine for a seed corpus of hundreds. Large synthetic corpora use MinHash LSH (dte_lib.diversity).
    """
    sets = [shingles(t, n) for t in texts]
    pairs = []
    for i in range(len(sets)):
        for j in range(i + 1, len(sets)):
            a, b = sets[i], sets[j]
            if a and b:
                jac = len(a & b) / len(a | b)
                if jac >= threshold:
                    pairs.append((i, j, jac))
    return sorted(pairs, key=lambda p: -p[2])


# ---------------------------------------------------------------------------------------------- split
def split_of(key: str, val_fraction: float, test_fraction: float) -> str:
    """'train', 'val' or 'test' from a hash of the key: stable under re-ordering and appends."""
    u = int(hashlib.sha256(key.encode()).hexdigest()[:15], 16) / 16**15
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def split(examples: Sequence[ChatExample], val_fraction: float = 0.1, test_fraction: float = 0.1
          ) -> dict[str, list[ChatExample]]:
    """Deterministic train/val/test split keyed on each example's id (content hash if it has none).

    Adding examples or shuffling the file never moves an existing example to another split.
    """
    if not 0 <= val_fraction + test_fraction < 1:
        raise ValueError("val_fraction + test_fraction must be in [0, 1)")
    out: dict[str, list[ChatExample]] = {"train": [], "val": [], "test": []}
    for ex in examples:
        out[split_of(ex.id, val_fraction, test_fraction)].append(ex)
    return out


# ---------------------------------------------------------------------------------------------- write
def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write via a temporary file in the same directory and rename: readers see the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_jsonl(path: str | os.PathLike, rows: Iterable[ChatExample | dict[str, Any]]) -> Path:
    """Atomically write examples (or plain dicts) as UTF-8 JSON Lines."""
    lines = [json.dumps(r.to_json() if isinstance(r, ChatExample) else r, ensure_ascii=False) for r in rows]
    return atomic_write_text(path, "".join(line + "\n" for line in lines))


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a JSONL file this project wrote (any row shape), failing with file:line on a bad line."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: invalid JSON ({e.msg})") from None
    return rows


# ---------------------------------------------------------------------------------------------- stats
def word_count(text: str) -> int:
    return len(text.split())


def corpus_stats(examples: Sequence[ChatExample]) -> dict[str, Any]:
    """Counts a person wants before training: examples, turns, words, topics."""
    import statistics
    words = [word_count(ex.assistant_text()) for ex in examples] or [0]
    prompts = [word_count(ex.prompt) for ex in examples] or [0]
    return {
        "examples": len(examples),
        "multi_turn": sum(1 for ex in examples if sum(m["role"] == "user" for m in ex.messages) > 1),
        "with_system": sum(1 for ex in examples if ex.system),
        "assistant_words_total": sum(words),
        "assistant_words_median": statistics.median(words),
        "assistant_words_min": min(words),
        "assistant_words_max": max(words),
        "prompt_words_median": statistics.median(prompts),
        "topics": dict(Counter(ex.topic or "(none)" for ex in examples).most_common()),
    }


def load_persona(path: str | os.PathLike) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)
