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
