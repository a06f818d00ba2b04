"""Each success metric ranks a good model above degenerate ones (random weights, one repeated answer, shuffled
references), and its floor/ceiling/normalisation behave as documented."""
from __future__ import annotations

import math
import random

import pytest
import torch

from dte_lib import config, data, metrics
from tests import _tiny


@pytest.fixture(scope="module")
def refs():
    test = [e for e in _tiny.corpus_split()["test"] if e.response][:12]
    return [e.prompt for e in test], [e.response for e in test]


@pytest.fixture(scope="module")
def probes_persona():
    cfg = config.load("ci")
    return data.read_rows(cfg.path(cfg.data.probes)), data.load_persona(cfg.path(cfg.data.persona))


def word_salad(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    vocab = "bright lamp seven under quickly paper river sold window green march tomorrow".split()
    return [" ".join(rng.choice(vocab) for _ in range(30)) for _ in range(n)]


# ------------------------------------------------------------------ perplexity / bits per byte
def test_lm_score_matches_hand_computed_next_token_loss():
    tok, m = _tiny.tokenizer(), _tiny.model(seed=3)
    ex = data.ChatExample(messages=[{"role": "user", "content": "Hi there"},
                                    {"role": "assistant", "content": "Hello, I am an echo."}])
    s = metrics.lm_score(m, tok, [ex], system="")
    prefix = tok(metrics.chat_prefix(tok, ex.prompt, None), add_special_tokens=False)["input_ids"]
    ans = tok(ex.response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([prefix + ans])
    labels = ids.clone()
    labels[0, :len(prefix)] = -100
    assert m.training  # lm_score gives the model back in the mode it found it in (nll_over restores it) ...
    m.eval()  # ... so the reference turns dropout off itself
    with torch.no_grad():
        ref = m(input_ids=ids, labels=labels).loss.item()  # HF shifts labels inside the model
    assert s.tokens == len(ans)
    assert s.nll_per_token == pytest.approx(ref, rel=1e-4)
    assert s.bits_per_byte == pytest.approx(ref * len(ans) / math.log(2) / len(ex.response.encode()), rel=1e-4)


def test_lm_score_sliding_window_scores_every_answer_token_once():
    tok, m = _tiny.tokenizer(), _tiny.model(seed=3, n_positions=32)
    ex = _tiny.corpus_split()["test"][0]
    s = metrics.lm_score(m, tok, [ex], stride=8)
    ans = tok(ex.response, add_special_tokens=False)["input_ids"]
    assert len(ans) > 32 and s.tokens == len(ans) + 1


def test_trained_model_beats_random_weights_on_perplexity_and_bpb():
    tok = _tiny.tokenizer()
    test = _tiny.corpus_split()["test"][:2]
    good = metrics.lm_score(_tiny.trained_model(), tok, test)
    rand = metrics.lm_score(_tiny.model(seed=5), tok, test)
    assert good.perplexity < 0.5 * rand.perplexity
    assert good.bits_per_byte < rand.bits_per_byte
    # random weights sit near a uniform guess over the vocabulary
    assert rand.perplexity > 0.5 * len(tok)


# ------------------------------------------------------------------ identity consistency
def test_identity_bounds_are_ordered_like_the_design_measurement(refs):
    _, r = refs
    b = metrics.identity_reference_bounds(r)
    assert 0.1 < b["floor"] < b["ceiling"] < 0.9


def test_identity_ranks_good_answers_above_degenerate_ones(refs):
    prompts, r = refs
    good = [metrics._halves(x)[1] for x in r]  # the second half of the true answer: same author, same question
    shuffled = [r[i] for i in metrics.derangement(len(r), seed=7)]
    repeat = [r[0]] * len(r)
    salad = word_salad(len(r))
    scores = {name: metrics.identity_consistency(a, r) for name, a in
              {"good": good, "shuffled": shuffled, "repeat": repeat, "salad": salad}.items()}
    assert scores["good"]["identity"] > scores["shuffled"]["identity"] + 0.15
    assert scores["good"]["identity"] > scores["repeat"]["identity"] + 0.15
    assert scores["shuffled"]["identity"] > scores["salad"]["identity"]
    assert scores["good"]["normalised"] > 0.6 and abs(scores["shuffled"]["normalised"]) < 0.5
    # a prompt-independent model scores the same against true and shuffled references
    assert scores["repeat"]["identity"] == pytest.approx(scores["repeat"]["shuffled"], abs=0.08)
    # the roadmap's raw threshold is above what the true second halves reach; only copies reach it
    assert scores["good"]["identity"] < 0.85
    assert metrics.identity_consistency(r, r)["identity"] == pytest.approx(1.0, abs=1e-4)


def test_hf_answerer_with_random_weights_scores_near_the_floor_or_below(refs):
    prompts, r = refs
    ans = metrics.hf_answerer(_tiny.model(seed=9), _tiny.tokenizer(), max_new_tokens=24)(prompts[:6])
    assert len(ans) == 6 and all(isinstance(a, str) for a in ans)
    s = metrics.identity_consistency(ans, r[:6])
    good = metrics.identity_consistency([metrics._halves(x)[1] for x in r[:6]], r[:6])
    assert s["identity"] < good["identity"] - 0.2


# ------------------------------------------------------------------ diversity
def test_diversity_ranks_real_answers_above_one_repeated_answer(refs):
    _, r = refs
    real = metrics.diversity(r)
    repeat = metrics.diversity([r[0]] * len(r))
    assert real["diversity"] > 0.6 and repeat["diversity"] < 0.2
    assert repeat["self_bleu"] == pytest.approx(1.0)


def test_diversity_is_blind_to_sense_as_documented(refs):
    # the caveat in the docstring: word salad is "diverse"; that is why diversity is read next to identity
    _, r = refs
    assert metrics.diversity(word_salad(len(r)))["distinct_1"] < metrics.diversity(r)["distinct_1"]
    rand_text = [" ".join(f"w{random.Random(i).randrange(10**6)}x{j}" for j in range(20)) for i in range(10)]
    assert metrics.diversity(rand_text)["diversity"] > 0.95


def test_diversity_of_empty_or_single_answers_is_zero():
    assert metrics.diversity(["", ""])["diversity"] == 0.0
    assert metrics.diversity(["one answer only"])["self_bleu"] == 1.0


# ------------------------------------------------------------------ copy check
def test_copy_rate_flags_recited_training_text(refs):
    train = [e.response for e in _tiny.corpus_split()["train"]]
    grams = metrics.training_ngrams(train)
    _, r = refs
    assert metrics.copy_rate(train[:5], grams) == 1.0
    assert metrics.copy_rate(r, grams) < 0.1  # held-out answers by the same author rarely share 8-grams
    assert metrics.copy_rate(["short answer"], grams) == 0.0


# ------------------------------------------------------------------ self-reference coherence
def test_coherence_ranks_consistent_factual_answers_above_degenerate_ones(probes_persona):
    probes, persona = probes_persona

    def per_probe(fn):
        return {p["id"]: [fn(p, k) for k in range(4)] for p in probes}

    def good(p, k):  # consistent, on-fact, worded differently per paraphrase
        sents = [s for s in p["reference"].split(". ") if s]
        return ". ".join(sents[k % len(sents):] + sents[:k % len(sents)])

    perm = metrics.derangement(len(probes), seed=3)
    by_id = {p["id"]: i for i, p in enumerate(probes)}
    scores = {
        "good": metrics.self_reference_coherence(per_probe(good), probes, persona),
        "repeat": metrics.self_reference_coherence(per_probe(lambda p, k: probes[0]["reference"]), probes, persona),
        "shuffled": metrics.self_reference_coherence(
            per_probe(lambda p, k: probes[perm[by_id[p["id"]]]]["reference"]), probes, persona),
        "salad": metrics.self_reference_coherence(
            per_probe(lambda p, k: word_salad(1, seed=hash((p["id"], k)) % 1000)[0]), probes, persona),
    }
    assert scores["repeat"]["agreement"] == 0.0
    for bad in ("repeat", "shuffled", "salad"):
        assert scores["good"]["coherence"] > scores[bad]["coherence"] + 0.2, bad
    b = metrics.coherence_reference_bounds(probes, persona)
    assert b["floor"] < scores["good"]["coherence"] <= b["ceiling"] + 1e-6


def test_keyword_recall_whole_words():
    assert metrics.keyword_recall("My readout is fixed.", ["readout", "fixed"]) == 1.0
    assert metrics.keyword_recall("readouts", ["readout"]) == 0.0
    assert metrics.keyword_recall("I am Deep Tree Echo", ["Deep Tree Echo"]) == 1.0


# ------------------------------------------------------------------ one call
def test_evaluate_returns_all_four_metrics_with_bounds():
    cfg = config.load("ci")
    es = metrics.EvalSet.build(cfg)
    ref = {e.prompt: e.response for e in es.examples}
    ref.update({q: p["reference"] for p in es.probes for q in p["paraphrases"]})
    out = metrics.evaluate(lambda ps: [ref[p] for p in ps], es, paraphrases=2)
    for k in ("identity", "identity_floor", "identity_ceiling", "identity_normalised", "diversity", "coherence",
              "coherence_floor", "coherence_ceiling", "copy_rate"):
        assert k in out and out[k] == out[k], k
    assert out["identity"] == pytest.approx(1.0, abs=1e-4)  # recited references: raw identity maxes out ...
    assert out["copy_rate"] < 0.2  # ... (held-out references are not in the training corpus)
