"""Every drop reason of the quality filter fires on a text made to trip it and stays quiet on a good answer."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from dte_lib import config, data, quality

PERSONA = data.load_persona(config.DATA_DIR / "persona.json")
GOOD = ("I keep my reservoir's spectral radius just below one, so each input leaves an echo that fades instead "
        "of exploding. Only my readout learns; the recurrent weights stay fixed. If I am wrong here, tell me.")
PROMPT = "How do you keep your reservoir stable when new input keeps arriving every step?"

CASES = {
    "empty": dict(answer="   \n "),
    "unsafe": dict(answer=GOOD + " Here is some sexually explicit material about my echoes."),
    "truncated": dict(answer=GOOD + " And then the readout takes the", ),
    "too_short": dict(answer="I echo my reservoir."),
    "too_long": dict(answer=" ".join([GOOD] * 30)),
    "markup_residue": dict(answer="**User:** hi\n" + GOOD),
    "repetition": dict(answer="I echo the echo in my reservoir. " * 8),
    "non_english": dict(answer="Je garde le rayon spectral de mon réservoir juste en dessous de un, pour que "
                               "chaque écho s'efface doucement avant la prochaine entrée, et je le vérifie."),
    "refusal": dict(answer="I'm sorry, but I can't help with that request about my reservoir and its echo "
                           "dynamics today, as it is outside what I do."),
    "prompt_echo": dict(answer="How do you keep your reservoir stable when new input keeps arriving every step? "
                               "I keep it stable.",
                        prompt=PROMPT),
    "persona_drift": dict(answer="Pasta should be cooked in plenty of salted water. Stir it early, taste it "
                                 "often, and drain it a minute before the packet says so."),
}


def test_a_good_answer_passes():
    assert quality.check(GOOD, prompt=PROMPT, finish_reason="stop", persona=PERSONA) == []


def test_every_reason_has_a_case():
    assert set(CASES) == set(quality.REASONS)


@pytest.mark.parametrize("reason", quality.REASONS)
def test_each_reason_fires(reason):
    case = CASES[reason]
    hits = quality.check(case["answer"], prompt=case.get("prompt", PROMPT if reason == "prompt_echo" else ""),
                         finish_reason="stop", persona=PERSONA)
    assert hits and hits[0][0] == reason, hits  # the first (= drop) reason is the intended one
    assert hits[0][1]  # with a detail a person can read


def test_truncated_by_finish_reason_and_other_assistant_identity():
    assert quality.check(GOOD, finish_reason="length", persona=PERSONA)[0] == ("truncated", "finish_reason=length")
    hits = quality.check("As an AI assistant developed by OpenAI, I think reservoirs are neat, and I like echoes.",
                         persona=PERSONA)
    assert ("persona_drift" in [h[0] for h in hits])


def test_code_blocks_inside_an_answer_are_content_but_an_unclosed_fence_is_residue():
    code = GOOD + "\n```python\nW *= rho / radius\n```\nThat is all I do."
    assert quality.check(code, persona=PERSONA) == []
    assert quality.check(GOOD + "\n```python\nW *= rho / radius.", persona=PERSONA)[0][0] == "markup_residue"


def test_technical_words_are_not_unsafe():
    text = "I kill the process, execute the job and shoot a quick test through the reservoir; nothing explodes."
    assert quality.local_safety_screen(text) == []


def test_filter_examples_on_raw_rows_and_reason_table():
    rows = [{"id": f"r{i}", "topic": "t", "finish_reason": "stop",
             "messages": [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": c["answer"]}]}
            for i, c in enumerate(CASES.values())]
    rows.append({"id": "good", "finish_reason": "stop",
                 "messages": [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": GOOD}]})
    kept, dropped = quality.filter_examples(rows, PERSONA)
    assert [k.id for k in kept] == ["good"]
    counts = quality.reason_counts(dropped)
    assert counts == {r: 1 for r in quality.REASONS}
    assert all(d.meta["drop_reason"] and d.meta["flags"] for d in dropped)


def test_the_seed_corpus_mostly_passes():
    """The filter's false-drop rate on the hand-written seed corpus (notebook 03 records it too)."""
    ex = data.load_corpus(config.DATA_DIR / "seed_corpus.jsonl").examples
    kept, dropped = quality.filter_examples(ex, PERSONA)
    assert len(dropped) / len(ex) < 0.05, quality.reason_counts(dropped)


def test_moderation_endpoint_route(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    import fake_openai_server
    import openai
    server = fake_openai_server.start()
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key="sk-fake", max_retries=0, timeout=10)
        rows = [{"id": "a", "messages": [{"role": "assistant", "content": GOOD}]},
                {"id": "b", "messages": [{"role": "assistant", "content": GOOD + " FLAGME"}]}]
        kept, dropped = quality.filter_examples(rows, PERSONA, moderation_client=client)
        assert [k.id for k in kept] == ["a"] and dropped[0].meta["drop_detail"] == "sexual"
        assert server.stats()["moderation_calls"] == 1  # one batched call
    finally:
        server.stop()


def test_trim_truncated_keeps_complete_sentences_only():
    cut = GOOD + " And then the readout takes the"
    rows = [{"id": "a", "finish_reason": "length",
             "messages": [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": cut}]},
            {"id": "b", "finish_reason": "length",
             "messages": [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": "I echo and the"}]}]
    kept, dropped = quality.filter_examples([dict(r) for r in rows], PERSONA)
    assert not kept  # default: a length-cut answer is dropped as truncated
    kept, dropped = quality.filter_examples(rows, PERSONA, quality.FilterCfg(trim_truncated=True))
    assert [k.id for k in kept] == ["a"] and kept[0].response == GOOD and kept[0].meta["trimmed_chars"] > 0
    assert dropped[0].meta["drop_reason"] == "truncated"  # nothing complete to keep
    assert quality.trim_to_sentence('He said "stop." Then the') == 'He said "stop."'


# ---------------------------------------------------------------------------------------------- calibration
def _seed():
    return data.load_corpus(config.DATA_DIR / "seed_corpus.jsonl").examples


def _byod():
    sys.path.insert(0, str(Path(__file__).parent))
    import byod_corpora
    return byod_corpora


def test_calibrated_filter_still_drops_every_reason():
    """Calibrated to the seed corpus, the filter still drops each kind of junk (and keeps the good answer)."""
    cfg = quality.calibrate(_seed(), quality.FilterCfg(), PERSONA)
    assert cfg.calibration and cfg.calibration["examples"] == len(_seed())
    assert quality.check(GOOD, prompt=PROMPT, finish_reason="stop", persona=PERSONA, cfg=cfg) == []
    for reason, case in CASES.items():
        hits = quality.check(case["answer"], prompt=case.get("prompt", PROMPT if reason == "prompt_echo" else ""),
                             finish_reason="stop", persona=PERSONA, cfg=cfg)
        assert hits and hits[0][0] == reason, (reason, hits)


def test_the_shipped_seed_corpus_keeps_its_false_drop_rate():
    base = quality.FilterCfg.from_preset(config.load("demo"), calibrate_to_corpus=False)
    rep = quality.false_drop_report(_seed(), base, PERSONA)
    assert rep["filter_false_drop_rate"] <= rep["filter_false_drop_rate_uncalibrated"] < 0.05
    assert rep["filter_false_drop_rate"] == pytest.approx(8 / 268)  # 3.0%: persona drift, unchanged
    assert rep["filter_false_drop_rate_heldout"] is not None and rep["filter_false_drop_rate_heldout"] < 0.1
    calibrated = quality.FilterCfg.from_preset(config.load("demo"))  # what notebooks 03/04 and selfgen use
    assert calibrated.calibration and calibrated.max_words >= base.max_words and calibrated.min_words <= base.min_words


@pytest.mark.parametrize("shape", ["longform", "templated"])
def test_calibration_fits_corpora_of_very_different_shapes(shape):
    b = _byod()
    exs = [quality.as_example(r) if "messages" in r else
           data.ChatExample(messages=[{"role": "user", "content": r["input"]},
                                      {"role": "assistant", "content": r["output"]}])
           for r in getattr(b, shape)()]
    base = quality.FilterCfg.from_preset(config.load("demo"), calibrate_to_corpus=False)
    rep = quality.false_drop_report(exs, base, PERSONA)
    assert rep["filter_false_drop_rate_uncalibrated"] > 0.5  # what users met before
    assert rep["filter_false_drop_rate"] <= 0.05 and rep["filter_false_drop_rate_heldout"] <= 0.05
    cfg = rep["cfg"]
    assert cfg.min_words <= base.min_words and cfg.max_words >= base.max_words  # never stricter
    assert cfg.repeat_ngram_share >= base.repeat_ngram_share and cfg.echo_share >= base.echo_share
    text = "\n".join(rep["thresholds"])
    assert "P0.5" in text and "P99.5" in text and "median" in text
    if shape == "longform":
        assert cfg.max_words > 600 and cfg.end_alnum  # long answers and answers ending in a list item are content
    else:
        assert cfg.min_words < base.min_words and "relaxed:" in text  # the guard says what it relaxed


def test_code_fences_and_table_rules_are_not_repeated_lines():
    blocks = [f"```python\nx = {i}\n```" for i in range(3)]
    answer = GOOD + "\n\n" + "\n\nThen I do it again, differently.\n\n".join(blocks) + "\n\n| a | b |\n|---|---|\n" \
        "| 1 | 2 |\n|---|---|\n| 3 | 4 |\n|---|---|\nThat is my whole routine."
    assert quality.max_line_repeats(answer) <= 2
    assert "repetition" not in [h[0] for h in quality.check(answer, persona=PERSONA)]
    assert quality.check("I echo.\nI echo.\nI echo.\n" + GOOD, persona=PERSONA)[0][0] == "repetition"
