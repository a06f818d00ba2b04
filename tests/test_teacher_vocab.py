"""The teacher-vocabulary student tokenizer (``train.tokenizer teacher_subset``, issue 21): the teacher's tokenizer
restricted to the ids a corpus uses, remapped, round-tripping the corpus exactly; the teacher's top-k of a logprobs
row mapped into it with what falls outside counted."""
from __future__ import annotations

import json

import numpy as np
import pytest

from dte_lib import config, data, distill, generate, teacher
from dte_lib import tokenizer as toklib

ODD = ["Echo 🌳🌀 says: naïve café — ✓\r\nline two\r\n\ttabbed  double  space", "<|im_start|>user\n<|user|>hi<|echo|>"
       "<|endoftext|> and <|im_end|> inside text", "日本語のテキスト، عربى, Ελληνικά; 1e-9 ≤ x ≥ 2³²\x00\x7f end"]


@pytest.fixture(scope="module")
def teacher_tok():
    return distill.teacher_tokenizer(teacher.base_model_dir())


@pytest.fixture(scope="module")
def corpus(teacher_tok):
    cfg = config.load("ci")
    ex = data.load_corpus(cfg.path(cfg.data.corpus)).examples
    return [toklib.render(e.messages, teacher_tok) for e in ex]


def _round_trip(teacher_tok, sub, ids, text):
    id_map = np.asarray(ids)
    t_ids = teacher_tok(text, add_special_tokens=False)["input_ids"]
    s_ids = sub(text, add_special_tokens=False)["input_ids"]
    assert list(distill.to_student(t_ids, id_map)) == s_ids  # same segmentation, remapped
    back = distill.to_teacher(s_ids, id_map).tolist()
    assert back == t_ids
    assert teacher_tok.decode(back, clean_up_tokenization_spaces=False) == text
    assert sub.decode(s_ids, clean_up_tokenization_spaces=False) == text


def test_subset_round_trips_the_seed_corpus_and_saves_a_real_tokenizer(teacher_tok, corpus, tmp_path):
    sub, ids = distill.subset_tokenizer(teacher_tok, corpus)
    used = {i for t in corpus for i in teacher_tok(t, add_special_tokens=False)["input_ids"]}
    assert used <= set(ids) and len(ids) == len(sub) < len(teacher_tok) // 4
    assert ids == sorted(ids) and ids[:17] == list(range(17))  # specials keep their ids
    for text in corpus:
        _round_trip(teacher_tok, sub, ids, text)
    d = distill.save_subset(sub, ids, tmp_path / "tok", "SmolLM2-135M-Instruct", len(teacher_tok))
    from tokenizers import Tokenizer
    raw = Tokenizer.from_file(str(d / "tokenizer.json"))  # the HF `tokenizers` format, no transformers needed
    assert raw.encode(corpus[0], add_special_tokens=False).ids == sub(corpus[0], add_special_tokens=False)["input_ids"]
    assert distill.load_id_map(d).tolist() == ids
    assert json.loads((d / "id_map.json").read_text())["teacher_vocab"] == len(teacher_tok)
    rows = {r["tokenizer"]: r for r in distill.vocab_report(corpus, {"teacher": teacher_tok, "subset": sub})}
    assert rows["subset"]["bytes_per_token"] == rows["teacher"]["bytes_per_token"] > 3.5
    assert rows["subset"]["vocab"] == len(ids)


def test_subset_round_trips_odd_text_in_and_outside_its_corpus(teacher_tok, corpus):
    sub, ids = distill.subset_tokenizer(teacher_tok, corpus[:20] + ODD)
    for text in ODD + corpus[:20]:
        _round_trip(teacher_tok, sub, ids, text)
    # text it was not built from still encodes (byte tokens and merge parents are kept) and decodes exactly
    small, small_ids = distill.subset_tokenizer(teacher_tok, corpus[:5])
    for text in ODD + corpus[-5:]:
        s_ids = small(text, add_special_tokens=False)["input_ids"]
        assert max(s_ids) < len(small_ids)
        assert small.decode(s_ids, clean_up_tokenization_spaces=False) == text


def test_teacher_topk_maps_into_the_student_vocabulary_and_outside_ids_are_counted(teacher_tok, corpus):
    import torch
    from transformers import AutoModelForCausalLM
    sub, ids = distill.subset_tokenizer(teacher_tok, corpus)
    model = AutoModelForCausalLM.from_pretrained(str(teacher.base_model_dir()), dtype=torch.float32).eval()
    text = corpus[3]
    t_ids = teacher_tok(text, add_special_tokens=False)["input_ids"][:96]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([t_ids])).logits[0, :-1].float(), -1)
    top = torch.topk(logp, 20, dim=-1)
    entries = [{"token_id": t_ids[i + 1], "logprob": float(logp[i, t_ids[i + 1]]),
                "top_logprobs": [{"token_id": int(j), "logprob": float(v)} for j, v in zip(top.indices[i], top.values[i])]}
               for i in range(len(t_ids) - 1)]
    row = generate.decode_logprobs(generate.encode_logprobs("r1", entries, 20))  # as logprobs.jsonl keeps it
    m = distill.map_topk(row["top_ids"], row["top_logprobs"], np.asarray(ids))
    keep = set(ids)
    expect_out = sum(int(j) not in keep for j in row["top_ids"].ravel())
    assert m["outside"] == expect_out and m["entries"] == row["top_ids"].size
    assert 0 < m["outside"] < m["entries"] / 2  # some of the teacher's alternatives are words the corpus never used
    inside = m["ids"] >= 0
    assert (distill.to_teacher(m["ids"][inside], np.asarray(ids)) == row["top_ids"][inside]).all()
    assert np.isneginf(m["logprobs"][~inside]).all() and 0 < m["outside_mass"] < len(entries)
    assert (distill.to_student(row["tokens"], np.asarray(ids)) >= 0).all()  # the sampled tokens are the corpus'


def test_notebook_06s_comparison_marks_the_runs_tokenizer_and_measures_each_in_its_own_rendering(teacher_tok):
    cfg = config.load("ci")
    ex = data.load_corpus(cfg.path(cfg.data.corpus)).examples
    train, val = ex[:60], ex[60:80]
    course = toklib.train_from_examples(train, 512)
    sub, _ = distill.subset_tokenizer(teacher_tok, [toklib.render(e.messages, teacher_tok) for e in train])
    for run_tok, mine in ((course, "course BPE"), (sub, "teacher subset")):
        rows = {r["tokenizer"]: r for r in distill.compare_tokenizers(train, val, run_tok, 512, 64)}
        assert [n for n, r in rows.items() if r["this run"]] == [mine]
        c, s, t = rows["course BPE"], rows["teacher subset"], rows["teacher (SmolLM2)"]
        assert c["vocab"] == 512 and c["vocab"] < s["vocab"] < t["vocab"] == 49_152
        assert s["tokens"] > t["tokens"]  # held-out words outside the subset fall back to smaller pieces
        assert c["bytes"] != s["bytes"]  # each on its own rendering (role tokens vs the teacher's chat template)
        assert s["head_params"] == s["vocab"] * 64
    rows = {r["tokenizer"]: r for r in distill.compare_tokenizers(train, train, course, 512, 64)}
    assert rows["teacher subset"]["tokens"] == rows["teacher (SmolLM2)"]["tokens"]  # its own corpus: the teacher's cut
