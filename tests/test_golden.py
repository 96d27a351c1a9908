"""Parity with numbers produced by the published MedTrim code."""

import pytest
import torch

from medtrim_ext import MetaEntities, TripletMiner, reference

from helpers import golden_cases, golden_vocabulary

GOLDEN = golden_cases()
CASES = GOLDEN["cases"]


@pytest.fixture(scope="module")
def vocab():
    return golden_vocabulary(GOLDEN)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_score_matrix_matches_published(case, vocab):
    ents = MetaEntities.from_records(case["samples"], vocabulary=vocab)
    expected = torch.tensor(case["score"], dtype=torch.float64)
    miner = TripletMiner(**case["weights"])
    kernel = miner.score_matrix(ents)
    assert kernel.dtype == torch.float32 and kernel.shape == expected.shape
    torch.testing.assert_close(kernel.double(), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(reference.score_matrix(ents, **case["weights"]).double(), expected,
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
@pytest.mark.parametrize("threshold", ["0.25", "0.5"])
def test_mining_matches_published(case, threshold, vocab):
    ents = MetaEntities.from_records(case["samples"], vocabulary=vocab)
    expected = case["mining_semi_hard_prob_1"][threshold]
    # the published code's pools break ties by position: our lowest-index rule
    miner = TripletMiner(**case["weights"], threshold=float(threshold), upper=0.6, semi_hard_prob=1.0,
                         tie_break="first")
    t = miner(ents)
    assert t.positive.tolist() == expected["positive"]
    assert t.negative.tolist() == expected["negative"]
    assert t.anchor.tolist() == list(range(len(ents)))
