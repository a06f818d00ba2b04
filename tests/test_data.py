"""dte_lib.data: every input format, every bad-input case (the table in docs/DATA.md), splits and writes."""
from __future__ import annotations

import json
import random

import pytest

from dte_lib import data, datacheck

GOOD = {"messages": [{"role": "user", "content": "Who are you?"},
                     {"role": "assistant", "content": "I am Deep Tree Echo."}]}


def jl(*objs) -> str:
    return "".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objs)


# (case, file bytes, expected code, expected line, a fragment the message or hint must contain)
BAD_INPUT = [
    ("invalid JSON on a line", jl(GOOD, '{"messages": [{"role": "user",'), "invalid_json", 2, "invalid JSON"),
    ("plain-text line inside JSONL", jl(GOOD, GOOD, "just some words"), "invalid_json", 3, "not JSON at all"),
    ("no known keys", jl({"question": "q", "answer": "a"}), "unknown_format", 1, "keys: answer, question"),
    ("message without role", jl({"messages": [{"content": "hi"}]}), "message_missing_key", 1, "no 'role'"),
    ("message without content", jl({"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}),
     "message_missing_key", 1, "no 'content'"),
    ("empty content", jl({"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "x"}]}),
     "empty_content", 1, "content is empty"),
    ("non-string content", jl({"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]}),
     "content_not_string", 1, "content is int"),
    ("unknown role", jl({"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]}),
     "unknown_role", 1, "rename role 'bot' to 'assistant'"),
    ("no assistant turn", jl({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]}),
     "no_assistant_turn", 1, "no assistant message"),
    ("messages not a list", jl({"messages": "hello"}), "messages_not_list", 1, "not a list"),
    ("empty messages", jl({"messages": []}), "empty_messages", 1, "'messages' is empty"),
    ("line is not an object", jl(GOOD, [1, 2]), "not_an_object", 2, "JSON list"),
    ("input without output", jl({"input": "q"}), "missing_key", 1, "no 'output'"),
    ("prompt without completion", jl({"prompt": "q"}), "missing_key", 1, "no 'completion'"),
    ("weight not 0/1", jl({"messages": [{"role": "user", "content": "u"},
                                        {"role": "assistant", "content": "a", "weight": 0.5}]}),
     "invalid_weight", 1, "weight is 0"),
    ("non-UTF-8 bytes", jl(GOOD).encode() + b'{"input": "caf\xe9", "output": "x"}\n', "not_utf8", 2, "iconv"),
    ("empty file", "", "empty_file", 0, "file is empty"),
    ("only blank lines", "\n\n  \n", "empty_file", 0, "file is empty"),
    ("plain text read as JSONL", "Deep Tree Echo said hello.\nThen it said goodbye.\n", "plain_text", 1,
     "no JSON objects and no chat tokens"),
    ("a JSON array, not JSONL", json.dumps([GOOD, GOOD]), "json_array", 1, "one object per line"),
    ("enormous line", jl(GOOD, {"input": "x" * 5000, "output": "y"}), "line_too_long", 2, "5,0"),
    ("transcript with text before the first token", "hello there <|user|> hi <|echo|> hey\n",
     "text_before_first_token", 1, "begin the transcript"),
    ("transcript without an echo turn", "<|system|> be kind\n<|user|> hi\n", "no_assistant_turn", 1,
     "<|echo|>"),
    ("lone UTF-16 surrogate in a JSON string", jl(GOOD) + '{"input": "hi \\ud800", "output": "x"}\n',
     "lone_surrogate", 2, "\\ud800 at column 15"),
    ("lone low surrogate", '{"input": "a \\udc00", "output": "x"}\n',
     "lone_surrogate", 1, "\\udc00"),
    ("empty turn inside a transcript", "<|user|> hi\n<|echo|> hello\n<|user|>\n<|echo|> bye\n", "empty_content", 1,
     "after its <|user|> tag"),
]


@pytest.mark.parametrize("case,content,code,line,fragment", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_is_reported_with_file_line_and_fix(tmp_path, case, content, code, line, fragment):
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    res = data.load_corpus(path, max_line_bytes=4096)
    assert [p.code for p in res.problems] == [code], res.summary()
    problem = res.problems[0]
    assert problem.line == line
    text = str(problem)
    assert fragment in text
    assert text.startswith(f"{path}:{line}: " if line else f"{path}: ")
    assert " — fix: " in text
    # valid lines are never silently dropped: kept + rejected add up to the records in the file
    good_lines = sum(1 for raw in path.read_bytes().splitlines()
                     if raw.strip() and b"<|" not in raw and _is_good(raw))
    assert res.kept == good_lines


def _is_good(raw: bytes) -> bool:
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return False
    return obj == GOOD


def test_strict_mode_raises_listing_every_problem(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(jl(GOOD, "oops", {"messages": []}, GOOD))
    with pytest.raises(data.CorpusError) as err:
        data.load_corpus(path, strict=True)
    assert err.value.problems[0].line == 2 and err.value.problems[1].line == 3
    assert "2 malformed record(s), 2 example(s) valid" in str(err.value)


def test_all_json_formats_become_the_same_example(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text(jl(
        {"id": "a", "topic": "identity", "messages": [{"role": "system", "content": "S"},
                                                      {"role": "user", "content": "Q"},
                                                      {"role": "assistant", "content": "A", "weight": 1}]},
        {"input": "Q", "output": "A", "system": "S"},
        {"prompt": "Q", "completion": "A"},
    ))
    res = data.load_corpus(path, strict=True)
    assert [ex.prompt for ex in res.examples] == ["Q"] * 3
    assert [ex.response for ex in res.examples] == ["A"] * 3
    assert res.examples[0].id == "a" and res.examples[0].topic == "identity"
    assert res.examples[1].system == "S" and res.examples[2].system is None
    assert res.examples[1].source == f"{path}:2"


def test_normalisation_crlf_bom_whitespace(tmp_path):
    path = tmp_path / "c.jsonl"
    raw = json.dumps({"messages": [{"role": "user", "content": "  line one\r\nline two   \r\n"},
                                   {"role": "assistant", "content": "\u200bok\u00a0"}]})
    path.write_bytes(b"\xef\xbb\xbf" + raw.encode() + b"\r\n")
    ex = data.load_corpus(path, strict=True).examples[0]
    assert ex.prompt == "line one\nline two"
    assert ex.response == "ok"


def test_transcripts_in_a_jsonl_named_file(tmp_path):
    per_line = tmp_path / "per_line.jsonl"
    per_line.write_text("<|user|> What are you? <|echo|> A tree of echoes.\n"
                        "<|system|> Be brief. <|user|> Hi <|echo|> Hello.\n")
    res = data.load_corpus(per_line, strict=True)
    assert res.formats[str(per_line)] == "transcript"
    assert [ex.response for ex in res.examples] == ["A tree of echoes.", "Hello."]
    assert res.examples[1].system == "Be brief."

    blocks = tmp_path / "blocks.txt"
    blocks.write_text("<|user|> First question\nspanning lines\n<|echo|> First answer.\n\nIt has two paragraphs.\n"
                      "<|user|> A follow-up\n<|echo|> Second answer.\n\n"
                      "<|user|> Another conversation\n<|echo|> Third.<|endoftext|><|user|> Fourth\n<|echo|> Four.\n")
    res = data.load_corpus(blocks, strict=True)
    assert len(res.examples) == 3
    first = res.examples[0]
    assert first.prompt == "First question\nspanning lines"
    assert [m["role"] for m in first.messages] == ["user", "assistant", "user", "assistant"]
    assert first.messages[1]["content"] == "First answer.\n\nIt has two paragraphs."
    assert res.examples[2].source.endswith(":10")


def test_exact_duplicates_ignore_ids_and_whitespace():
    a = data.ChatExample(messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
                         id="1")
    b = data.ChatExample(messages=[{"role": "user", "content": "hi  "}, {"role": "assistant", "content": "yo"}],
                         id="2")
    c = data.ChatExample(messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "no"}])
    groups = data.exact_duplicates([a, b, c])
    assert [[e.id for e in g] for g in groups] == [["1", "2"]]


def test_near_duplicate_pairs_finds_templated_answers():
    texts = ["my reservoir keeps a fading echo of every input it has seen",
             "my reservoir keeps a fading echo of every input it has heard",
             "P-system membranes rewrite multisets of symbols in parallel"]
    pairs = data.near_duplicate_pairs(texts, threshold=0.5, n=3)
    assert [(i, j) for i, j, _ in pairs] == [(0, 1)]


def _examples(n):
    return [data.ChatExample(messages=[{"role": "user", "content": f"q{i}"},
                                       {"role": "assistant", "content": f"a{i}"}], id=f"id-{i}") for i in range(n)]


def test_split_is_deterministic_and_stable_under_reorder_and_append():
    exs = _examples(400)
    first = data.split(exs, 0.1, 0.1)
    assert sum(map(len, first.values())) == 400
    assert 20 <= len(first["test"]) <= 60 and 20 <= len(first["val"]) <= 60
    shuffled = exs[:]
    random.Random(0).shuffle(shuffled)
    again = data.split(shuffled + _examples(500)[400:], 0.1, 0.1)
    for name in ("train", "val", "test"):
        assert {e.id for e in first[name]} <= {e.id for e in again[name]}


def test_write_jsonl_is_atomic_and_round_trips(tmp_path):
    path = tmp_path / "out" / "train.jsonl"
    exs = _examples(3)
    data.write_jsonl(path, exs)
    data.write_jsonl(path, exs[:2])
    assert [p.name for p in path.parent.iterdir()] == ["train.jsonl"]  # no temp files left behind
    back = data.load_corpus(path, strict=True).examples
    assert [e.id for e in back] == ["id-0", "id-1"]


def test_cli_check_exit_code_and_output(tmp_path, capsys):
    path = tmp_path / "c.jsonl"
    path.write_text(jl(GOOD, GOOD, "nope"))
    assert datacheck.main(["check", str(path)]) == 1
    out = capsys.readouterr().out
    assert "kept 2 example(s), rejected 1 record(s)" in out
    assert f"{path}:3: invalid JSON" in out
    assert "exact duplicates" in out


# ---------------------------------------------------------------------------------------------- your own tags
CUSTOM = ("<|record|>\n<|system|> You are Nyx, a lighthouse keeper.\n<|user|> What do you see tonight?\n"
          "<|nyx|> Fog, mostly. The beam cuts it into slices.\n\n"
          "<|record|>\n<|system|> You are Nyx.\n<|user|> Are you lonely?\n<|nyx|> Sometimes.\n\nMostly I count ships.\n"
          "<|user|> How many?\n<|nyx|> Eleven today.\n")


def test_roles_map_custom_tags_and_record_tags(tmp_path, monkeypatch):
    path = tmp_path / "nyx.txt"
    path.write_text(CUSTOM)
    res = data.load_corpus(path)
    assert res.kept == 0 and {p.code for p in res.problems} == {"unknown_tag"}
    assert data.parse_roles(res.proposals[str(path)]) == {"<|nyx|>": "assistant", "<|record|>": "record"}
    for roles in ("nyx=assistant,record=start", {"<|nyx|>": "assistant", "<|record|>": "record"}):
        res = data.load_corpus(path, strict=True, roles=roles)
        assert [ex.prompt for ex in res.examples] == ["What do you see tonight?", "Are you lonely?"]
        assert [m["role"] for m in res.examples[1].messages] == ["system", "user", "assistant", "user", "assistant"]
        assert res.examples[1].messages[2]["content"] == "Sometimes.\n\nMostly I count ships."
        assert res.examples[1].source.endswith(":6")
    monkeypatch.setenv(data.ROLES_ENV, "nyx=assistant,record=record")  # what `dte course run --roles` sets
    assert data.load_corpus(path, strict=True).kept == 2


def test_parse_roles_literal_tags_end_tags_and_errors(tmp_path):
    assert data.parse_roles("[Q]=user, [A]=assistant,###=end") == {"[Q]": "user", "[A]": "assistant", "###": "end"}
    path = tmp_path / "qa.txt"
    path.write_text("[Q] one? [A] One.###[Q] two? [A] Two.###\n")
    res = data.load_corpus(path, strict=True, roles="[Q]=user,[A]=assistant,###=end")
    assert [ex.response for ex in res.examples] == ["One.", "Two."]
    with pytest.raises(ValueError, match="unknown role 'narrator'"):
        data.parse_roles("x=narrator")
    with pytest.raises(ValueError, match="has no '='"):
        data.parse_roles("x:assistant")


def test_roles_rename_jsonl_message_roles(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(jl({"messages": [{"role": "visitor", "content": "hi"}, {"role": "quill", "content": "yo"}]}))
    assert data.load_corpus(path).rejected == 1
    assert data.load_corpus(path, strict=True, roles="visitor=user,quill=assistant").examples[0].response == "yo"


def test_most_records_failing_one_way_is_said_once_with_a_count(tmp_path):
    path = tmp_path / "many.txt"
    path.write_text("".join(f"<|rec|>\n<|human|> q{i}\n<|persona|> a{i}.\n\n" for i in range(187)))
    res = data.load_corpus(path)
    assert res.rejected == 187 and list(res.misread()) == [str(path)]
    text = res.summary()
    assert text.count("looks misread") == 1 and "--roles '" in text
    assert text.count("unknown tag") <= 6 and "and 182 more unknown_tag problem(s)" in text
    assert data.parse_roles(res.proposals[str(path)]) == {"<|rec|>": "record", "<|persona|>": "assistant"}
    assert data.load_corpus(path, strict=True, roles=res.proposals[str(path)]).kept == 187


def test_binary_file_is_one_problem(tmp_path):
    png = tmp_path / "photo.jsonl"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 40)
    res = data.load_corpus(png)
    assert [p.code for p in res.problems] == ["binary_file"] and "a PNG image" in res.problems[0].message
    blob = tmp_path / "blob.txt"
    blob.write_bytes(b"hello\x00world\n" * 50)
    assert [p.code for p in data.load_corpus(blob).problems] == ["binary_file"]
    with pytest.raises(FileNotFoundError, match="check the path"):
        data.load_corpus(tmp_path / "nope.jsonl")


# ---------------------------------------------------------------------------------------------- how files are stored
def test_surrogate_pairs_load_and_a_lone_half_is_one_problem(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(jl(GOOD) + '{"input": "smile \\ud83d\\ude00", "output": "x"}\n'
                    + '{"input": "cut \\ud83d", "output": "y"}\n')
    res = data.load_corpus(path)
    assert res.examples[1].prompt == "smile \U0001F600"  # a pair is one character
    assert [(p.line, p.code) for p in res.problems] == [(3, "lone_surrogate")]
    assert "export it again" in res.problems[0].hint and "\\ud83d at column 16" in res.problems[0].message


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_utf16_files_are_read(tmp_path, encoding):
    path = tmp_path / "c.jsonl"
    path.write_bytes(jl(GOOD, {"input": "café?", "output": "Oui."}).encode(encoding))
    res = data.load_corpus(path, strict=True)
    assert [ex.prompt for ex in res.examples] == ["Who are you?", "café?"]
    assert res.formats[str(path)] == "jsonl, " + ("UTF-16-LE" if encoding == "utf-16" else encoding.upper())
    tr = tmp_path / "t.txt"
    tr.write_bytes("<|user|> hi\n<|echo|> I am Echo.\n".encode(encoding))
    assert data.load_corpus(tr, strict=True).examples[0].response == "I am Echo."


def test_gzip_files_are_read_and_a_truncated_one_is_named(tmp_path):
    import gzip
    path = tmp_path / "my.jsonl.gz"
    path.write_bytes(gzip.compress(jl(GOOD, {"input": "q", "output": "a"}).encode()))
    res = data.load_corpus(path, strict=True)
    assert res.kept == 2 and res.formats[str(path)] == "jsonl, gzip"
    (tmp_path / "notes.md").write_text("not a corpus")
    assert data.load_corpus(tmp_path, strict=True).kept == 2  # a directory's *.jsonl.gz too
    rows = [{"input": f"question {i} " + "x" * (i % 50), "output": f"answer {i * 7919 % 10007}"} for i in range(3000)]
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(gzip.compress(jl(*rows).encode())[:4000])
    probs = data.load_corpus(cut).problems
    assert [p.code for p in probs] == ["bad_gzip"] and "gzip -t" in probs[0].hint
    inner = tmp_path / "png.jsonl.gz"
    inner.write_bytes(gzip.compress(b"\x89PNG\r\n\x1a\n\x00\x00" + bytes(range(256)) * 8))
    probs = data.load_corpus(inner).problems
    assert [p.code for p in probs] == ["binary_file"] and "inside the gzip file" in probs[0].message


# ---------------------------------------------------------------------------------------------- opener tags
ECHO_OPENER = "".join(f"<|echo|><|system|> You are Echo. <|user|> Question {i}? <|echo|> I am Echo; answer {i}. "
                      "<|endoftext|>\n" for i in range(12))


@pytest.mark.parametrize("roles", [None, "<|echo|>=assistant"])
def test_a_persona_tag_that_also_opens_each_record_is_an_opener(tmp_path, roles):
    path = tmp_path / "echo.txt"
    path.write_text(ECHO_OPENER)
    res = data.load_corpus(path, strict=True, roles=roles)
    assert res.kept == 12
    assert [m["role"] for m in res.examples[3].messages] == ["system", "user", "assistant"]
    assert res.examples[3].response == "I am Echo; answer 3."


def test_when_most_records_fail_the_mapping_that_loads_most_is_proposed(tmp_path):
    path = tmp_path / "quinn.txt"  # the persona's tag <|q|> reads like a question tag to the name heuristic
    path.write_text("".join(f"<|q|><|system|> You are Quinn.\n<|user|> Ask {i}?\n<|q|> Quinn answers {i}.\n"
                            "<|endoftext|>\n" for i in range(20)))
    assert data.propose_roles(path.read_text()) == {"<|q|>": "user"}  # the guess alone loads nothing
    res = data.load_corpus(path)
    assert res.kept == 0 and data.parse_roles(res.proposals[str(path)]) == {"<|q|>": "assistant"}
    assert "--roles '<|q|>=assistant'" in res.misread()[str(path)]["advice"]
    assert all("<|q|>=assistant" in p.hint for p in res.problems)  # every hint agrees with the advice
    assert data.load_corpus(path, strict=True, roles=res.proposals[str(path)]).kept == 20
