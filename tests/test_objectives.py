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
    t = soft_targets(scores, torch.arange(5), own_weight=0.5, target_temperature=0.05)
    assert torch.allclose(t.sum(1), torch.ones(5))
    # query 0: its own pair and the identical report 1 share the score mass; the other severity less
    assert t[0, 0] > t[0, 1] > t[0, 2] > t[0, 3]
    assert t[0, 1] == pytest.approx(t[1, 0].item())
    # normal queries spread over the normal studies only
    assert t[3, :3].sum() < 1e-6
    assert t[3, 3].item() == pytest.approx(0.75, abs=1e-5) and t[3, 4].item() == pytest.approx(0.25, abs=1e-5)
    with pytest.raises(ValueError, match="own_weight"):
        soft_targets(scores, torch.arange(5), own_weight=1.5)
    with pytest.raises(ValueError, match="target_temperature"):
        soft_targets(scores, torch.arange(5), target_temperature=0)
    with pytest.raises(TypeError, match="renamed 'target_temperature'"):
        soft_targets(scores, torch.arange(5), temperature=0.05)


def test_soft_infonce_is_cross_entropy_with_the_score_targets():
    ents = synthetic_entities(24, seed=1)
    img, txt = embeddings(24, seed=1)
    loss = InfoNCELoss(logit_temperature=0.1, learnable=False)
    obj = SoftInfoNCEObjective(loss, TripletMiner(), own_weight=0.3, target_temperature=0.2)
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


@pytest.mark.parametrize("legacy", [False, True])
def test_objective_step_checkpoint_state_restores_the_memory_bank(legacy, tmp_path):
    """The bank is part of the objective's state_dict; checkpoints of the earlier format (the bank
    under "memory_bank", a plain dict of its filled rows) still restore it."""
    from medtrim_ext.training.distributed import DistContext
    from medtrim_ext.training.timing import StepTimer

    cfg = load_config("demo", ["objective.memory_bank=40", "objective.kind=medtrim+infonce"]).objective
    step = ObjectiveStep(cfg, 16, seed=5)
    ents = synthetic_entities(16, seed=2)
    img, txt = embeddings(16, seed=2)
    batch = {"entities": ents, "index": torch.arange(16)}
    step(img, txt, batch, DistContext(), StepTimer(torch.device("cpu")), step=0)
    with torch.no_grad():
        step.objective.parts["infonce"].loss.log_scale.add_(0.25)  # as if trained
    state = step.checkpoint_state()
    assert set(state) == {"objective"}
    assert state["objective"]["bank._extra_state"]["count"] == 16
    assert state["objective"]["bank.img"].shape == (40, 16)
    if legacy:  # the format before the bank was a module
        objective = {k: v for k, v in state["objective"].items() if not k.startswith("bank.")}
        n = 16
        old = {**{k: v for k, v in state["objective"]["bank._extra_state"].items()},
               **{k: state["objective"][f"bank.{k}"][:n].clone() for k in
                  ("img", "txt", "disease_bits", "adjective_bits", "direction_bits", "ids")}}
        state = {"objective": objective, "memory_bank": old}
    path = tmp_path / "state.pt"
    torch.save(state, path)
    state = torch.load(path, weights_only=True)

    restored = ObjectiveStep(cfg, 16, seed=5)
    assert len(restored.bank) == 0
    restored.load_checkpoint_state(state)
    assert len(restored.bank) == 16
    assert restored.objective.parts["infonce"].loss.log_scale.item() == \
        step.objective.parts["infonce"].loss.log_scale.item()
    nxt = {"entities": synthetic_entities(16, seed=3), "index": torch.arange(16, 32)}
    img2, txt2 = embeddings(16, seed=3)
    a = step(img2, txt2, nxt, DistContext(), StepTimer(torch.device("cpu")), step=1)
    b = restored(img2, txt2, nxt, DistContext(), StepTimer(torch.device("cpu")), step=1)
    assert a.loss.item() == b.loss.item()  # same bank, same generator of (seed, step): same triplets
    # an empty bank's state empties a filled one; a run without a bank ignores a bank's entries
    restored.load_checkpoint_state(ObjectiveStep(cfg, 16, seed=5).checkpoint_state())
    assert len(restored.bank) == 0 and not restored.bank.allocated
    no_bank = ObjectiveStep(load_config("demo", ["objective.kind=medtrim+infonce"]).objective, 16)
    no_bank.load_checkpoint_state(step.checkpoint_state())
    assert no_bank.bank is None
    # a bank of another size does not take the entries
    other = ObjectiveStep(load_config("demo", ["objective.memory_bank=8",
                                               "objective.kind=medtrim+infonce"]).objective, 16)
    with pytest.raises(ValueError, match="size=40"):
        other.load_checkpoint_state(step.checkpoint_state())


def test_the_objective_defaults_are_written_once():
    """The config's loss and objective defaults are the modules' (OBJECTIVE_DEFAULTS), and so is
    the offline pools' size: written in one place each."""
    import inspect

    from medtrim_ext.losses import OBJECTIVE_DEFAULTS
    from medtrim_ext.mining.offline import OFFLINE_POOL_SIZE, OfflineTripletSampler, mine_offline_triplets
    from medtrim_ext.training.config import MAX_LOGIT_SCALE, ObjectiveConfig

    def default(fn, name):
        return inspect.signature(fn).parameters[name].default

    cfg, d = ObjectiveConfig(), OBJECTIVE_DEFAULTS
    assert cfg.margin == default(MultimodalTripletLoss, "margin") == MultimodalTripletLoss().margin == d.margin
    assert cfg.logit_temperature == default(InfoNCELoss, "logit_temperature") == d.logit_temperature
    assert InfoNCELoss().logit_scale.item() == pytest.approx(1 / d.logit_temperature)
    assert MAX_LOGIT_SCALE == default(InfoNCELoss, "max_logit_scale") == d.max_logit_scale
    assert cfg.soft_own_weight == default(SoftInfoNCEObjective, "own_weight") == \
        default(soft_targets, "own_weight") == d.own_weight
    assert cfg.target_temperature == default(SoftInfoNCEObjective, "target_temperature") == \
        default(soft_targets, "target_temperature") == SoftInfoNCEObjective().target_temperature == \
        d.target_temperature
    assert cfg.pool_size == default(OfflineTripletSampler, "pool_size") == \
        default(mine_offline_triplets, "pool_size") == OFFLINE_POOL_SIZE == 32
    # the published values (the demo's numbers rest on them)
    assert d.as_kwargs() == {"margin": 0.3, "logit_temperature": 0.07, "max_logit_scale": 100.0,
                             "own_weight": 0.5, "target_temperature": 0.1}


def test_objectives_take_only_the_keywords_they_use():
    """No keyword is swallowed: a misspelt or foreign one raises TypeError naming it; the
    composite passes each part its own keywords and refuses those no part takes."""
    from medtrim_ext.losses import objective_keywords

    ents = synthetic_entities(12, seed=8)
    img, txt = embeddings(12, seed=8)
    g = torch.Generator().manual_seed(0)
    with pytest.raises(TypeError, match="generatr"):
        MedTrimObjective()(img, txt, ents, generatr=g)
    with pytest.raises(TypeError, match="own_index"):  # MedTrim has no own pair among candidates
        MedTrimObjective()(img, txt, ents, own_index=torch.arange(12))
    with pytest.raises(TypeError, match="generator"):  # InfoNCE mines nothing
        InfoNCEObjective()(img, txt, ents, generator=g)
    with pytest.raises(TypeError, match="anchor_ids"):
        SoftInfoNCEObjective()(img, txt, ents, anchor_ids=torch.arange(12))
    assert objective_keywords(InfoNCEObjective()) == {"cand_img", "cand_txt", "own_index", "timer"}
    assert objective_keywords(SoftInfoNCEObjective()) == {"cand_img", "cand_txt", "cand_entities",
                                                          "own_index", "timer"}
    assert "own_index" not in objective_keywords(MedTrimObjective())

    both = CompositeObjective({"medtrim": MedTrimObjective(), "infonce": InfoNCEObjective()})
    assert both.keywords == objective_keywords(MedTrimObjective()) | {"own_index"}
    with pytest.raises(TypeError, match=r"\['cand_entites'\]"):
        both(img, txt, ents, cand_entites=ents)
    # each part gets its own share: MedTrim the generator, InfoNCE the own index
    own = torch.arange(12)
    out = both(img, txt, ents, generator=torch.Generator().manual_seed(1), own_index=own)
    m = MedTrimObjective()(img, txt, ents, generator=torch.Generator().manual_seed(1))
    i = InfoNCEObjective()(img, txt, ents, own_index=own)
    assert out.loss.item() == pytest.approx(m.loss.item() + i.loss.item(), abs=1e-6)

    class AnyKeywords(torch.nn.Module):  # a user's part that takes everything gets everything
        def forward(self, img_emb, txt_emb, entities, **kwargs):
            self.seen = set(kwargs)
            return InfoNCEObjective()(img_emb, txt_emb, entities)

    part = AnyKeywords()
    loose = CompositeObjective({"infonce": InfoNCEObjective(), "mine": part})
    assert loose.keywords is None
    loose(img, txt, ents, own_index=own, anything=1)
    assert part.seen == {"own_index", "anything"}


def test_old_temperature_keywords_raise_with_the_new_name():
    with pytest.raises(TypeError, match="renamed 'logit_temperature'"):
        InfoNCELoss(temperature=0.05)
    with pytest.raises(TypeError, match="renamed 'target_temperature'"):
        SoftInfoNCEObjective(temperature=0.05)
    with pytest.raises(TypeError, match="unexpected keyword argument 'temprature'"):
        InfoNCELoss(temprature=0.05)
    # the two temperatures are different things and say so
    soft = SoftInfoNCEObjective(InfoNCELoss(logit_temperature=0.05), target_temperature=0.2)
    assert soft.loss.logit_scale.item() == pytest.approx(20.0)
    assert soft.target_temperature == 0.2
    assert "logit_temperature=0.05" in repr(soft) and "target_temperature=0.2" in repr(soft)
    # the config keys carry the same names; the old ones are refused with the new name
    assert load_config("demo", ["objective.logit_temperature=0.05"]).objective.logit_temperature == 0.05
    for old, new in (("temperature", "logit_temperature"), ("soft_temperature", "target_temperature")):
        with pytest.raises(ValueError, match=f"objective.{old} was renamed objective.{new}"):
            load_config("demo", [f"objective.{old}=0.05"])


def test_stored_configs_of_earlier_versions_read_with_the_new_names():
    """A run folder's config written before the rename (objective.temperature) still resumes and
    evaluates: the stored config is read with the new names, a user's config is not."""
    from medtrim_ext.training.config import Config, upgrade_config_dict
    from medtrim_ext.training.rundir import config_changes

    new = load_config("demo", ["objective.kind=infonce", "objective.logit_temperature=0.1"]).to_dict()
    old = {**new, "objective": {k: v for k, v in new["objective"].items()
                                if k not in ("logit_temperature", "target_temperature")}}
    old["objective"].update(temperature=0.1, soft_temperature=0.1)
    assert config_changes(old, new) == []
    assert Config.from_dict(upgrade_config_dict(old)).objective.logit_temperature == 0.1
    assert "objective.logit_temperature: 0.1 -> 0.2" in config_changes(
        old, load_config("demo", ["objective.kind=infonce", "objective.logit_temperature=0.2"]).to_dict())
    with pytest.raises(ValueError, match="objective.temperature was renamed objective.logit_temperature"):
        Config.from_dict(old)


def test_a_logit_temperature_in_no_optimizer_warns_once():
    """A loop that forgets objective.parameters() trains with a frozen temperature: warned."""
    import warnings

    from medtrim_ext.losses.infonce import FROZEN_CHECK_CALLS

    ents = synthetic_entities(12, seed=9)

    def run(objective, with_params):
        params = [*objective.parameters()] if with_params else []
        w = torch.nn.Parameter(torch.randn(16, 16, generator=torch.Generator().manual_seed(0)))
        opt = torch.optim.SGD([w, *params], lr=0.1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for k in range(FROZEN_CHECK_CALLS + 3):
                img, txt = embeddings(12, seed=k)
                objective(img @ w, txt @ w, ents).loss.backward()
                opt.step()
                opt.zero_grad()
        return [str(c.message) for c in caught if "in no optimizer" in str(c.message)]

    assert len(run(InfoNCEObjective(), with_params=False)) == 1
    assert run(InfoNCEObjective(), with_params=True) == []
    assert run(InfoNCEObjective(InfoNCELoss(learnable=False)), with_params=False) == []
    assert len(run(CompositeObjective({"medtrim": MedTrimObjective(),
                                       "soft_infonce": SoftInfoNCEObjective()}), with_params=False)) == 1
    frozen = InfoNCEObjective()
    frozen.eval()  # evaluation calls are not training steps
    assert run(frozen, with_params=False) == []


def test_the_miner_defaults_are_written_once():
    from medtrim_ext.apps.cli import build_parser
    from medtrim_ext.mining import MINER_DEFAULTS
    from medtrim_ext.training.config import ObjectiveConfig

    miner, cfg = TripletMiner(), ObjectiveConfig()
    args = build_parser().parse_args(["mine", "records.json", "-o", "out.csv"])
    for name, value in MINER_DEFAULTS.as_kwargs().items():
        assert getattr(miner, name) == getattr(cfg, name) == getattr(args, name) == value, name
