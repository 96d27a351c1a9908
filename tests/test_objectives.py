"""The composable objectives: soft-target InfoNCE, weighted sums, the distributed divisor, and
the training step calling these same public objects."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medtrim_ext import MedTrimObjective, MetaEntities, MultimodalTripletLoss, TripletMiner
from medtrim_ext.losses.infonce import InfoNCELoss, InfoNCEObjective, SoftInfoNCEObjective, soft_targets
from medtrim_ext.losses.objectives import CompositeObjective
from medtrim_ext.entities.synthetic import synthetic_entities
from medtrim_ext.training import load_config
from medtrim_ext.training.objective_step import ObjectiveStep, build_objective_module


def embeddings(n, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g).requires_grad_(),
            torch.randn(n, d, generator=g).requires_grad_())


def test_soft_targets_rows_are_distributions_centred_on_exact_matches():
    ents = MetaEntities.from_records([{"edema": {"adjs": ["mild"]}}, {"edema": {"adjs": ["mild"]}},
                                      {"edema": {"adjs": ["severe"]}}, {}, {}])
    scores = TripletMiner().score_matrix(ents)
    t = soft_targets(scores, torch.arange(5), own_weight=0.5, temperature=0.05)
    assert torch.allclose(t.sum(1), torch.ones(5))
    # query 0: its own pair and the identical report 1 share the score mass; the other severity less
    assert t[0, 0] > t[0, 1] > t[0, 2] > t[0, 3]
    assert t[0, 1] == pytest.approx(t[1, 0].item())
    # normal queries spread over the normal studies only
    assert t[3, :3].sum() < 1e-6
    assert t[3, 3].item() == pytest.approx(0.75, abs=1e-5) and t[3, 4].item() == pytest.approx(0.25, abs=1e-5)
    with pytest.raises(ValueError, match="own_weight"):
        soft_targets(scores, torch.arange(5), own_weight=1.5)
    with pytest.raises(ValueError, match="temperature"):
        soft_targets(scores, torch.arange(5), temperature=0)


def test_soft_infonce_is_cross_entropy_with_the_score_targets():
    ents = synthetic_entities(24, seed=1)
    img, txt = embeddings(24, seed=1)
    loss = InfoNCELoss(temperature=0.1, learnable=False)
    obj = SoftInfoNCEObjective(loss, TripletMiner(), own_weight=0.3, temperature=0.2)
    out = obj(img, txt, ents)
    targets = soft_targets(TripletMiner().score_matrix(ents), torch.arange(24), 0.3, 0.2)
    logits = 10.0 * F.normalize(img, dim=1) @ F.normalize(txt, dim=1).T
    i2t = -(targets * logits.log_softmax(1)).sum(1).mean()
    t2i = -(targets * logits.T.log_softmax(1)).sum(1).mean()
    assert out.loss.item() == pytest.approx(((i2t + t2i) / 2).item(), abs=1e-5)
    assert out.loss_img.item() == pytest.approx(i2t.item() / 2, abs=1e-5)
    assert out.triplets is None
    out.loss.backward()
    assert torch.isfinite(img.grad).all()
    # all the mass on the own pair: plain InfoNCE
    hard = SoftInfoNCEObjective(loss, own_weight=1.0)(img, txt, ents).loss
    assert hard.item() == pytest.approx(InfoNCEObjective(loss)(img, txt, ents).loss.item(), abs=1e-5)


def test_soft_infonce_with_candidates_and_own_index():
    ents, bank = synthetic_entities(8, seed=2), synthetic_entities(20, seed=3)
    img, txt = embeddings(8, seed=2)
    cand_img, cand_txt = embeddings(20, seed=3)
    own = torch.arange(8) + 4
    cands = MetaEntities.cat([bank[slice(0, 4)], ents, bank[slice(12, 20)]])
    ci = torch.cat([cand_img[:4], img, cand_img[12:]])
    ct = torch.cat([cand_txt[:4], txt, cand_txt[12:]])
    out = SoftInfoNCEObjective()(img, txt, ents, cand_img=ci, cand_txt=ct, cand_entities=cands,
                                 own_index=own)
    assert math.isfinite(out.loss.item())
    with pytest.raises(ValueError, match="own_index must have shape"):
        SoftInfoNCEObjective()(img, txt, ents, cand_img=ci, cand_txt=ct, cand_entities=cands,
                               own_index=own[:3])
    with pytest.raises(ValueError, match="cand_img, cand_txt and cand_entities together"):
        SoftInfoNCEObjective()(img, txt, ents, cand_img=ci, cand_txt=ct)


def test_composite_is_the_weighted_sum_of_its_parts():
    ents = synthetic_entities(32, seed=4)
    img, txt = embeddings(32, seed=4)
    medtrim, infonce = MedTrimObjective(), InfoNCEObjective()
    both = CompositeObjective({"medtrim": medtrim, "infonce": infonce}, weights={"medtrim": 0.5})
    out = both(img, txt, ents, generator=torch.Generator().manual_seed(0))
    m = medtrim(img, txt, ents, generator=torch.Generator().manual_seed(0))
    i = infonce(img, txt, ents)
    assert out.loss.item() == pytest.approx(0.5 * m.loss.item() + i.loss.item(), abs=1e-6)
    assert out.loss_img.item() == pytest.approx(0.5 * m.loss_img.item() + i.loss_img.item(), abs=1e-6)
    assert torch.equal(out.triplets.positive, m.triplets.positive)
    assert out.stats["medtrim/loss"].item() == pytest.approx(m.loss.item(), abs=1e-6)
    assert "infonce/logit_scale" in out.stats and "medtrim/valid_fraction" in out.stats
    out.loss.backward()
    with pytest.raises(ValueError, match="weights name parts that do not exist"):
        CompositeObjective({"medtrim": medtrim}, weights={"infonce": 1.0})
    with pytest.raises(ValueError, match="finite number >= 0"):
        CompositeObjective({"medtrim": medtrim}, weights={"medtrim": -1.0})
    with pytest.raises(ValueError, match="at least one part"):
        CompositeObjective({})


def test_count_reducer_sets_the_divisor_of_the_triplet_mean():
    ents = synthetic_entities(32, seed=5)
    img, txt = embeddings(32, seed=5)
    obj = MedTrimObjective()
    plain = obj(img, txt, ents, generator=torch.Generator().manual_seed(1))
    doubled = obj(img, txt, ents, generator=torch.Generator().manual_seed(1),
                  count_reducer=lambda c: 2 * c)
    assert doubled.loss.item() == pytest.approx(plain.loss.item() / 2, rel=1e-6)
    summed = MedTrimObjective(loss=MultimodalTripletLoss(reduction="sum"))(
        img, txt, ents, generator=torch.Generator().manual_seed(1))
    count = plain.stats["valid_triplets"].item()
    assert summed.loss.item() == pytest.approx(plain.loss.item() * count, rel=1e-5)
    with pytest.raises(ValueError, match="reduction 'mean' or 'sum'"):
        MedTrimObjective(loss=MultimodalTripletLoss(reduction="none"))


def test_given_triplets_are_not_mined():
    ents = synthetic_entities(9, seed=6)
    img, txt = embeddings(9, seed=6)
    from medtrim_ext import Triplets

    t = Triplets(torch.arange(3), torch.arange(3) + 3, torch.arange(3) + 6)
    out = MedTrimObjective()(img, txt, ents, triplets=t)
    assert torch.equal(out.triplets.negative, t.negative)


@pytest.mark.parametrize("kind, parts", [("medtrim", None), ("infonce", None), ("soft_infonce", None),
                                         ("medtrim+infonce", ["medtrim", "infonce"]),
                                         ("medtrim+soft_infonce", ["medtrim", "soft_infonce"])])
def test_training_builds_the_public_objectives(kind, parts):
    cfg = load_config("demo", [f"objective.kind={kind}"]).objective
    module = build_objective_module(cfg)
    if parts is None:
        expected = {"medtrim": MedTrimObjective, "infonce": InfoNCEObjective,
                    "soft_infonce": SoftInfoNCEObjective}[kind]
        assert type(module) is expected
    else:
        assert isinstance(module, CompositeObjective) and list(module.parts) == parts
    assert isinstance(ObjectiveStep(cfg, 64).objective, type(module))


def test_training_step_equals_the_public_objective():
    """The trainer adds ids and the own index, nothing else: same loss as a direct call."""
    from medtrim_ext.training.distributed import DistContext
    from medtrim_ext.training.timing import StepTimer

    cfg = load_config("demo", ["objective.kind=medtrim+soft_infonce",
                               "objective.weights={medtrim: 2.0}"]).objective
    step = ObjectiveStep(cfg, 16)
    ents = synthetic_entities(32, seed=7)
    img, txt = embeddings(32, seed=7)
    ids = torch.randperm(1000)[:32]
    got = step(img, txt, {"entities": ents, "index": ids}, DistContext(), StepTimer(torch.device("cpu")),
               generator=torch.Generator().manual_seed(3))
    want = step.objective(img, txt, ents, anchor_ids=ids, generator=torch.Generator().manual_seed(3))
    assert got.loss.item() == pytest.approx(want.loss.item(), abs=1e-6)
    assert step.objective.weights == {"medtrim": 2.0, "soft_infonce": 1.0}


def test_soft_targets_may_use_their_own_score_weights():
    cfg = load_config("demo", ["objective.kind=medtrim+soft_infonce",
                               "objective.soft_weights=[0.5, 0.3, 0.2]"]).objective
    module = build_objective_module(cfg)
    assert module.parts["soft_infonce"].miner.weights == {"w_dis": 0.5, "w_adj": 0.3, "w_dir": 0.2}
    assert module.parts["medtrim"].miner.weights == {"w_dis": 0.85, "w_adj": 0.10, "w_dir": 0.05}


def test_objective_step_checkpoint_state_restores_the_memory_bank():
    from medtrim_ext.training.distributed import DistContext
    from medtrim_ext.training.timing import StepTimer

    cfg = load_config("demo", ["objective.memory_bank=40"]).objective
    step = ObjectiveStep(cfg, 16, seed=5)
    ents = synthetic_entities(16, seed=2)
    img, txt = embeddings(16, seed=2)
    batch = {"entities": ents, "index": torch.arange(16)}
    step(img, txt, batch, DistContext(), StepTimer(torch.device("cpu")), step=0)
    state = step.checkpoint_state()
    assert set(state) == {"objective", "memory_bank"} and state["memory_bank"]["count"] == 16

    restored = ObjectiveStep(cfg, 16, seed=5)
    restored.load_checkpoint_state(state)
    nxt = {"entities": synthetic_entities(16, seed=3), "index": torch.arange(16, 32)}
    img2, txt2 = embeddings(16, seed=3)
    a = step(img2, txt2, nxt, DistContext(), StepTimer(torch.device("cpu")), step=1)
    b = restored(img2, txt2, nxt, DistContext(), StepTimer(torch.device("cpu")), step=1)
    assert a.loss.item() == b.loss.item()  # same bank, same generator of (seed, step): same triplets


def test_the_miner_defaults_are_written_once():
    from medtrim_ext.apps.cli import build_parser
    from medtrim_ext.mining import MINER_DEFAULTS
    from medtrim_ext.training.config import ObjectiveConfig

    miner, cfg = TripletMiner(), ObjectiveConfig()
    args = build_parser().parse_args(["mine", "records.json", "-o", "out.csv"])
    for name, value in MINER_DEFAULTS.as_kwargs().items():
        assert getattr(miner, name) == getattr(cfg, name) == getattr(args, name) == value, name
