"""The field's retrieval protocols on hand-made cases (issue 22): own-pair recall that counts
identical reports as one item, label-match precision at the disease-set level, graded nDCG@10
by meta-entity score. The definitions are in docs/training.md (evaluation)."""

import math

import pytest
import torch

from medtrim_ext import MetaEntities, TripletMiner
from medtrim_ext.evaluation import evaluate_retrieval, retrieval_metrics, text_groups


def test_text_groups_normalise_case_space_and_punctuation():
    groups = text_groups(["Normal chest.", "normal   chest", "NORMAL chest!", "No pleural effusion.",
                          "No pleural effusion", "Small left effusion."]).tolist()
    assert groups[0] == groups[1] == groups[2] and groups[3] == groups[4]
    assert len(set(groups)) == 3
    with pytest.raises(TypeError, match="texts must be strings"):
        text_groups(["a", None])


def test_pair_recall_counts_identical_reports_as_one_item():
    # three studies; 0 and 1 have the same report. Query 0's nearest text is study 1's.
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    txt = torch.tensor([[0.6, 0.8], [1.0, 0.05], [-1.0, 0.1]])
    keys = {"disease": torch.tensor([0, 0, 1])}
    texts = ["Normal chest.", "normal chest", "Large right effusion."]
    out = evaluate_retrieval(img, txt, keys, ks=[1], texts=texts)["i2t"]["disease"]
    # images 0 and 1 each rank the other normal study's text first: misses for the strict own
    # pair, hits when identical reports count as one item; image 2 finds its own
    assert out["exact_pair_recall@1"] == pytest.approx(1 / 3)
    assert out["pair_recall@1"] == pytest.approx(1.0)
    plain = evaluate_retrieval(img, txt, keys, ks=[1])["i2t"]["disease"]
    assert plain["pair_recall@1"] == pytest.approx(1 / 3) and "exact_pair_recall@1" not in plain


def test_label_match_precision_is_disease_set_equality():
    # disease-set keys: 0 = {edema}, 1 = {edema, effusion}, 2 = no finding
    query = torch.tensor([[1.0, 0.0]])
    gallery = torch.tensor([[0.9, 0.1], [0.8, 0.3], [0.1, 1.0], [0.7, 0.6]])
    out = retrieval_metrics(query, gallery, torch.tensor([0]), torch.tensor([1, 0, 0, 2]), ks=[1, 2, 4])
    # ranking by cosine: 0 (key 1), 1 (key 0), 3 (key 2), 2 (key 0)
    assert out["precision@1"] == 0.0                      # a superset of the diseases is no match
    assert out["precision@2"] == pytest.approx(1 / 2)
    assert out["precision@4"] == pytest.approx(2 / 4)


def test_ndcg_grades_by_meta_entity_score():
    records = [{"edema": {}},                              # the query's record
               {"edema": {}},                              # identical: score 1
               {"edema": {}, "pleural effusion": {}},      # J = 1/2, IoUs of empty sets 1
               {}]                                         # no finding: score 0
    ents = MetaEntities.from_records(records)
    miner = TripletMiner()
    s = miner.score_matrix(ents[:1], ents)[0].double()
    assert s[1] == 1.0 and s[3] == 0.0
    by_hand = 0.85 * 0.5 + (0.10 * 1 + 0.05 * 1) / 1
    assert s[2].item() == pytest.approx(by_hand, abs=1e-7)
    # query 0 against a gallery of items 1..3, ranked 2, 1, 3 by the embeddings
    query = torch.tensor([[1.0, 0.0]])
    gallery = torch.tensor([[0.8, 0.6], [1.0, 0.05], [0.0, 1.0]])
    out = retrieval_metrics(query, gallery, torch.zeros(1, dtype=torch.int64), torch.zeros(3, dtype=torch.int64),
                            ks=[1], graded=(ents[:1], ents[1:], miner), ndcg_k=2)
    rel = [s[2].item(), s[1].item()]                         # the ranking's relevances
    ideal = [s[1].item(), s[2].item()]
    dcg = sum(r / math.log2(j + 2) for j, r in enumerate(rel))
    idcg = sum(r / math.log2(j + 2) for j, r in enumerate(ideal))
    assert out["ndcg@2"] == pytest.approx(dcg / idcg, rel=1e-12)
    assert out["queries_without_graded"] == 0
    # a query sharing nothing with any item (every relevance 0) has no nDCG and is counted
    none = retrieval_metrics(query, gallery[2:], torch.zeros(1, dtype=torch.int64), torch.zeros(1, dtype=torch.int64),
                             ks=[1], graded=(ents[:1], ents[3:], miner))
    assert math.isnan(none["ndcg@10"]) and none["queries_without_graded"] == 1


def test_ndcg_perfect_and_reversed_rankings():
    ents = MetaEntities.from_records([{"edema": {"adjs": ["mild"]}}, {"edema": {"adjs": ["mild"]}},
                                      {"edema": {}}, {"atelectasis": {}}, {}])
    miner = TripletMiner()
    rel = miner.score_matrix(ents[:1], ents[1:])[0]
    order = torch.argsort(rel, descending=True, stable=True)
    # gallery embeddings whose cosine to the query follows the relevance exactly, then reversed
    angles = torch.linspace(0.1, 1.4, 4)
    best = torch.empty(4, 2)
    best[order] = torch.stack([torch.cos(angles), torch.sin(angles)], 1)
    worst = torch.empty(4, 2)
    worst[order.flip(0)] = torch.stack([torch.cos(angles), torch.sin(angles)], 1)
    q = torch.tensor([[1.0, 0.0]])
    z1, z4 = torch.zeros(1, dtype=torch.int64), torch.zeros(4, dtype=torch.int64)
    perfect = retrieval_metrics(q, best, z1, z4, ks=[1], graded=(ents[:1], ents[1:], miner))["ndcg@10"]
    reverse = retrieval_metrics(q, worst, z1, z4, ks=[1], graded=(ents[:1], ents[1:], miner))["ndcg@10"]
    assert perfect == pytest.approx(1.0) and reverse < 0.8


def test_evaluate_retrieval_reports_graded_ndcg_both_ways():
    g = torch.Generator().manual_seed(0)
    from medtrim_ext.entities.synthetic import synthetic_records

    ents = MetaEntities.from_records(synthetic_records(40, seed=1))
    img, txt = torch.randn(40, 8, generator=g), torch.randn(40, 8, generator=g)
    out = evaluate_retrieval(img, txt, {"disease": torch.zeros(40, dtype=torch.int64)}, ks=[1, 5],
                             entities=ents)
    for direction in ("i2t", "t2i"):
        value = out[direction]["graded"]["ndcg@10"]
        assert 0.0 < value < 1.0
    with pytest.raises(ValueError, match="entities has 3 rows for 40 samples"):
        evaluate_retrieval(img, txt, {"disease": torch.zeros(40, dtype=torch.int64)}, entities=ents[:3])


def test_results_tables_show_the_graded_ndcg():
    from medtrim_ext.evaluation import key_metrics

    paths = ["i2t/disease/precision@5", "i2t/disease/pair_recall@5", "i2t/graded/ndcg@10",
             "t2i/graded/ndcg@10", "t2i/disease/precision@5"]
    shown = key_metrics(paths)
    assert shown.index("i2t/graded/ndcg@10") > shown.index("i2t/disease/pair_recall@5")
    assert "t2i/graded/ndcg@10" in shown


def test_graded_ndcg_leaves_the_other_metrics_of_its_pass_alone():
    """nDCG computed in the same pass as mAP and pair recall (evaluate_retrieval does so with its
    first key) leaves them as a pass without it gives (its gains once shadowed the relevance mask)."""
    from medtrim_ext.entities.synthetic import synthetic_records

    g = torch.Generator().manual_seed(0)
    ents = MetaEntities.from_records(synthetic_records(120, seed=2))
    q, gal = torch.randn(120, 6, generator=g), torch.randn(120, 6, generator=g)
    keys = torch.randint(0, 4, (120,), generator=g)
    pair = torch.arange(120)
    plain = retrieval_metrics(q, gal, keys, keys, ks=[1, 5], pair_index=pair)
    with_graded = retrieval_metrics(q, gal, keys, keys, ks=[1, 5], pair_index=pair,
                                    graded=(ents, ents, TripletMiner()))
    assert {k: with_graded[k] for k in plain} == plain and 0 < with_graded["ndcg@10"] < 1
