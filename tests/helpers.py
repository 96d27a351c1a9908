"""Shared helpers and hypothesis strategies for the medtrim_ext tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import strategies as st

from medtrim_ext import MetaEntities, Vocabulary

DATA = Path(__file__).parent / "data"

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def golden_cases() -> dict:
    """Scores and triplets produced by the published MedTrim code (see tests/data/README.md)."""
    return json.loads((DATA / "golden_score_mining.json").read_text())


def golden_vocabulary(golden: dict) -> Vocabulary:
    return Vocabulary(
        diseases=tuple(c for c in golden["classes"] if c != "no finding"),
        adjectives=tuple(golden["adjective_vocab"]),
        directions=tuple(golden["direction_vocab"]),
        name="published-medtrim",
    )


def generic_vocabulary(c: int, a: int, r: int) -> Vocabulary:
    return Vocabulary(tuple(f"disease {i}" for i in range(c)), tuple(f"adj {i}" for i in range(a)),
                      tuple(f"dir {i}" for i in range(r)), name=f"generic-{c}-{a}-{r}")


def random_entities(n: int, vocab: Vocabulary, *, p_disease: float, p_desc: float,
                    generator: torch.Generator, pool: int | None = None) -> MetaEntities:
    """Random masks; with ``pool`` the samples are drawn from ``pool`` distinct ones (many ties)."""
    c, a, r = vocab.sizes
    rows = n if pool is None else max(1, pool)
    dis = torch.rand(rows, c, generator=generator) < p_disease
    adj = torch.rand(rows, c, a, generator=generator) < p_desc
    dirs = torch.rand(rows, c, r, generator=generator) < p_desc
    if pool is not None:
        pick = torch.randint(rows, (n,), generator=generator)
        dis, adj, dirs = dis[pick], adj[pick], dirs[pick]
    return MetaEntities.from_masks(dis, adj, dirs, vocab)


@st.composite
def entity_sets(draw, max_n: int = 40):
    """(anchors, candidates or None, vocabulary): random sizes, densities, vocabularies and ties."""
    c = draw(st.integers(1, 32))
    a = draw(st.sampled_from([1, 3, 31, 32, 33, 70]))
    r = draw(st.sampled_from([1, 2, 4, 40]))
    vocab = generic_vocabulary(c, a, r)
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    p_disease = draw(st.sampled_from([0.0, 0.05, 0.2, 0.5, 1.0]))
    p_desc = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
    pool = draw(st.one_of(st.none(), st.integers(1, 4)))
    n = draw(st.integers(1, max_n))
    anchors = random_entities(n, vocab, p_disease=p_disease, p_desc=p_desc, generator=g, pool=pool)
    candidates = None
    if draw(st.booleans()):
        m = draw(st.integers(0, max_n))
        candidates = random_entities(m, vocab, p_disease=p_disease, p_desc=p_desc, generator=g, pool=pool)
    return anchors, candidates, vocab


weights = st.tuples(*(st.sampled_from([0.0, 0.05, 0.1, 0.3, 0.5, 0.85, 1.0, 2.5]) for _ in range(3)))


def golden_loss_cases() -> list[dict]:
    """Losses and gradients of the published triplet loss (see tests/data/README.md)."""
    return json.loads((DATA / "golden_loss_cases.json").read_text())["cases"]


@st.composite
def loss_problems(draw, max_rows: int = 40, max_dim: int = 70, candidates: bool | None = None):
    """Random loss inputs: (img, txt, cand_img, cand_txt, anchor, positive, negative, margin).

    Float64 data (cast by the tests), repeated indices, -1 entries, zero rows and duplicated rows.
    """
    n = draw(st.integers(1, max_rows))
    use_cand = draw(st.booleans()) if candidates is None else candidates
    m = draw(st.integers(1, max_rows)) if use_cand else n
    dim = draw(st.integers(1, max_dim))
    t = draw(st.integers(0, 2 * max_rows))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)

    def rows(k):
        x = torch.randn(k, dim, generator=g, dtype=torch.float64) * draw(st.sampled_from([0.1, 1.0, 30.0]))
        if k and draw(st.booleans()):  # zero rows and exact duplicates
            x[torch.randint(0, k, (max(1, k // 5),), generator=g)] = 0
            x[torch.randint(0, k, (max(1, k // 5),), generator=g)] = x[0].clone()
        return x

    img, txt = rows(n), rows(n)
    cand_img, cand_txt = (rows(m), rows(m)) if use_cand else (None, None)
    p_skip = draw(st.sampled_from([0.0, 0.2, 1.0]))

    def index(k):
        idx = torch.randint(0, k, (t,), generator=g)
        return torch.where(torch.rand(t, generator=g) < p_skip / 3, -1, idx)

    margin = draw(st.sampled_from([0.0, 0.1, 0.3, 1.0, 2.0]))
    return img, txt, cand_img, cand_txt, index(n), index(m), index(m), margin


def make_extraction_fail_on(monkeypatch, word: str = "boom") -> None:
    """Make the extraction pipeline's ``medtrim_record`` component raise RuntimeError("kaboom")
    on every report containing ``word`` (the others are analysed as usual): one bad report among
    good ones. Forked extraction workers inherit the patch."""
    from medtrim_ext.extraction import components

    real = components.RecordBuilder.process

    def fragile(self, doc):
        if word in doc.text:
            raise RuntimeError("kaboom")
        real(self, doc)

    monkeypatch.setattr(components.RecordBuilder, "process", fragile)
