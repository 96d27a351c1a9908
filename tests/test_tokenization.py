"""The WordPiece tokenizer trained on reports: real ids, BERT specials, atomic save, reload."""

from __future__ import annotations

import pytest

from medtrim_ext.models.tokenization import load_tokenizer, save_tokenizer, train_wordpiece_tokenizer


@pytest.fixture(scope="module")
def corpus():
    from medtrim_ext.datasets.phantoms import _streams, sample_attributes
    from medtrim_ext.datasets.phantoms import compose_report

    out = []
    for i in range(300):
        r = _streams(0, i)
        out.append(compose_report(sample_attributes(r[0]), r[4]))
    return out


@pytest.fixture(scope="module")
def tok(corpus):
    return train_wordpiece_tokenizer(corpus, vocab_size=600)


def test_special_tokens_and_real_words(tok):
    assert tok.pad_token_id == 0
    assert tok.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]) == [0, 1, 2, 3, 4]
    ids = tok("Small left pleural effusion. No pneumothorax.")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    words = tok.convert_ids_to_tokens(ids[1:-1])
    assert tok.unk_token_id not in ids
    assert {"small", "left", "pleural", "effusion", "pneumothorax"} <= set(words)
    # an unseen word splits into pieces rather than [UNK]; case is folded
    assert tok.unk_token_id not in tok("Xylophone QUIZ")["input_ids"]
    assert tok("EFFUSION")["input_ids"] == tok("effusion")["input_ids"]
    pair = tok("left", "right")["input_ids"]
    assert pair.count(tok.sep_token_id) == 2
    assert len(tok) <= 600


def test_batch_padding(tok):
    enc = tok(["Left effusion.", "Moderate cardiomegaly with mild pulmonary edema."], padding=True,
              return_tensors="pt")
    assert enc["input_ids"].shape == enc["attention_mask"].shape
    assert enc["input_ids"][0, -1] == 0 and enc["attention_mask"][0, -1] == 0


def test_save_and_load_round_trip(tok, corpus, tmp_path):
    out = tmp_path / "tok"
    trained = train_wordpiece_tokenizer(corpus, vocab_size=600, out_dir=out)
    assert (out / "tokenizer.json").is_file()
    loaded = load_tokenizer(out)
    # (two trainings may differ: the tokenizers library breaks merge ties in hash order, so a run
    # keeps the tokenizer it trained; the round trip itself must be exact)
    assert loaded.get_vocab() == trained.get_vocab()
    for text in corpus[:20] + ["", "Tiny right apical pneumothorax!"]:
        assert loaded(text)["input_ids"] == trained(text)["input_ids"]
    assert loaded.pad_token_id == 0 and loaded.model_max_length == 512
    # saving again replaces the folder whole, with no temporary folders left behind
    save_tokenizer(train_wordpiece_tokenizer(["only these words"], vocab_size=100), out)
    assert len(load_tokenizer(out)) < len(loaded)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]


def test_cased(corpus):
    cased = train_wordpiece_tokenizer(corpus[:50], vocab_size=300, lowercase=False)
    assert cased("FINDINGS")["input_ids"] != cased("findings")["input_ids"]


@pytest.mark.parametrize("texts,err", [
    ([], ValueError), (["", "   "], ValueError), ("a single string", TypeError),
    (["ok", 3], TypeError),
])
def test_bad_corpus(texts, err):
    with pytest.raises(err):
        train_wordpiece_tokenizer(texts)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        train_wordpiece_tokenizer(["a b"], vocab_size=3)
    with pytest.raises(ValueError):
        train_wordpiece_tokenizer(["a b"], min_frequency=0)
    with pytest.raises(ValueError, match="does not exist"):
        load_tokenizer(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="tokenizer.json"):
        load_tokenizer(tmp_path / "empty")


def test_training_is_deterministic(corpus):
    """A seeded run must be repeatable: the same texts give the same vocabulary and ids."""
    a = train_wordpiece_tokenizer(corpus, vocab_size=300)
    b = train_wordpiece_tokenizer(list(corpus), vocab_size=300)
    assert a.get_vocab() == b.get_vocab()
    words = [w for w in a.get_vocab() if w.isalpha() and len(w) > 3]
    assert words, "frequent whole words are in the vocabulary"
