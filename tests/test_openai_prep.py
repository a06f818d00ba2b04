"""dte_lib.openai_prep: every cookbook error key, each correction, token counts on known strings, epochs, cost."""
from __future__ import annotations

import json

import pytest

from dte_lib import data, openai_prep as op

U = {"role": "user", "content": "Hi"}
A = {"role": "assistant", "content": "Hello"}
TOOL_CALL = {"role": "assistant", "content": None,
             "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


def keys(row):
    return set(op.validate_rows([row], min_examples=1).errors)


@pytest.mark.parametrize("row, key", [
    ("just a string", "data_type"),
    ({"msgs": []}, "missing_messages_list"),
    ({"messages": [U, {"role": "assistant"}]}, "message_missing_key"),
    ({"messages": [{"content": "x"}, A]}, "message_missing_key"),
    ({"messages": [U, {**A, "mood": "happy"}]}, "message_unrecognized_key"),
    ({"messages": [U, {"role": "echo", "content": "x"}, A]}, "unrecognized_role"),
    ({"messages": [U, {"role": "assistant", "content": ""}]}, "missing_content"),
    ({"messages": [U, {"role": "assistant", "content": 5}]}, "missing_content"),
    ({"messages": [U]}, "example_missing_assistant_message"),
])
def test_every_cookbook_error_key(row, key):
    assert key in keys(row)


def test_a_clean_example_passes():
    assert keys({"messages": [{"role": "system", "content": "s"}, U, A]}) == set()


def test_correction_tool_calls_and_tools_are_valid():
    row = {"messages": [U, TOOL_CALL, {"role": "tool", "tool_call_id": "c1", "content": "42"}, A], "tools": TOOLS}
    assert keys(row) == set()
    assert keys({**row, "tools": [{"name": "f"}]}) == {"invalid_tools"}


@pytest.mark.parametrize("weight, ok", [(0, True), (1, True), (0.5, False), (2, False), (True, False)])
def test_correction_weight_only_0_or_1(weight, ok):
    assert (keys({"messages": [U, {**A, "weight": weight}]}) == set()) == ok
    assert "invalid_weight" in keys({"messages": [{**U, "weight": 1}, A]})  # only on assistant turns


def test_correction_minimum_and_recommended_examples():
    row = {"messages": [U, A]}
    assert "too_few_examples" in op.validate_rows([row] * 9).errors
    r = op.validate_rows([row] * 10)
    assert r.ok and any("50" in w for w in r.warnings)
    assert op.validate_rows([row] * 50).warnings == []


def test_input_output_is_reported_and_converted():
    rows = [{"input": "Who?", "output": "Echo."}, {"prompt": "P", "completion": "C"}]
    r = op.validate_rows(rows, min_examples=1)
    assert r.errors["wrong_format_prompt_completion"] == 2
    conv = op.convert_rows(rows, system="sys")
    assert conv[0]["messages"] == [{"role": "system", "content": "sys"}, {"role": "user", "content": "Who?"},
                                   {"role": "assistant", "content": "Echo."}]
    assert op.validate_rows(conv, min_examples=1).ok


def test_o200k_known_token_counts():
    enc = op.encoding()
    assert enc.name == "o200k_base"
    # known o200k_base ids, checked by hand against OpenAI's tokenizer: "hello world" -> [24912, 2375]
    assert enc.encode("hello world") == [24912, 2375]
    assert op.count_text("hello world") == 2 and op.count_text("") == 0
    assert enc.decode(enc.encode("Deep Tree Echo")) == "Deep Tree Echo"
    # the cookbook rule, computed independently: 3 per message + role + content, + 3 reply priming
    row = {"messages": [{"role": "user", "content": "hello world"}]}
    assert op.count_example(row) == 3 + len(enc.encode("user")) + 2 + 3
    named = {"messages": [{"role": "user", "content": "hello world", "name": "ann"}]}
    assert op.count_example(named) == op.count_example(row) + 1 + len(enc.encode("ann"))


def test_cap_and_billed_tokens():
    long = {"messages": [U, {"role": "assistant", "content": "echo " * 70_000}]}
    r = op.validate_rows([long] * 10)
    assert r.ok and any("truncated" in w for w in r.warnings)
    est = op.estimate([long, {"messages": [U, A]}], epochs=2)
    assert est["over_cap"] == 1
    assert est["billed_tokens"] == 2 * (op.MAX_TOKENS_PER_EXAMPLE + op.count_example({"messages": [U, A]}))
    assert est["training_usd"] == pytest.approx(est["billed_tokens"] * 3.00 / 1e6)


@pytest.mark.parametrize("n, epochs", [(10, 10), (3, 25), (33, 4), (34, 3), (100, 3), (8333, 3), (8334, 2),
                                       (30_000, 1)])
def test_auto_epochs(n, epochs):
    assert op.auto_epochs(n) == epochs


def test_prices_are_dated_and_overridable():
    rows = [{"messages": [U, A]}] * 10
    est = op.estimate(rows, epochs=1, expected_requests=1000, prompt_tokens_per_request=100,
                      expected_output_tokens=200)
    assert est["prices_as_of"] == op.PRICES_AS_OF
    assert est["inference_usd"] == pytest.approx((100_000 * 0.30 + 200_000 * 1.20) / 1e6)
    assert est["inference_batch_usd"] == pytest.approx(est["inference_usd"] / 2)
    cheap = op.estimate(rows, epochs=1, model="my-model", prices={"my-model": {"training": 1.0, "input": 0,
                                                                               "output": 0}})
    assert cheap["training_usd"] == pytest.approx(cheap["billed_tokens"] / 1e6)
    with pytest.raises(KeyError, match="no price"):
        op.estimate(rows, model="unknown")


def test_split_80_20_holds_out_the_test_split_and_is_stable():
    ex = data.load_corpus(data.Path(__file__).parent.parent / "data" / "seed_corpus.jsonl").examples
    parts = op.split_80_20(ex)
    assert sum(map(len, parts.values())) == len(ex)
    test_ids = {e.id for e in data.split(ex, 0.1, 0.1)["test"]}
    assert {e.id for e in parts["test"]} == test_ids
    share = len(parts["validation"]) / (len(parts["train"]) + len(parts["validation"]))
    assert 0.12 < share < 0.28
    assert [e.id for e in op.split_80_20(list(reversed(ex)))["validation"]] == \
        [e.id for e in reversed(parts["validation"])]


def test_to_chat_row_drops_metadata_and_validates(tmp_path):
    ex = data.load_corpus(data.Path(__file__).parent.parent / "data" / "seed_corpus.jsonl").examples[:12]
    rows = [op.to_chat_row(e) for e in ex]
    assert all(set(r) == {"messages"} for r in rows)
    path = data.write_jsonl(tmp_path / "ft.jsonl", rows)
    assert op.validate_file(path).ok
    (tmp_path / "bad.jsonl").write_text("not json\n" + json.dumps(rows[0]) + "\n")
    r = op.validate_file(tmp_path / "bad.jsonl")
    assert r.errors["data_type"] == 1 and r.problems[0][0] == 1
