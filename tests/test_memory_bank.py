"""MemoryBank: FIFO ring, candidates, checkpoints, and mining through MedTrimObjective."""

import pytest
import torch

from medtrim_ext import MedTrimObjective, MetaEntities, MultimodalTripletLoss, TripletMiner, Vocabulary
from medtrim_ext.losses.memory_bank import MemoryBank
from medtrim_ext.entities.synthetic import synthetic_entities

from helpers import cuda_only, generic_vocabulary

DIM = 6


def batch(n, seed, start=0, device="cpu"):
    """(img, txt, entities, ids) of n samples with ids start..start+n-1."""
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(n, DIM, generator=g).to(device).requires_grad_()
    txt = torch.randn(n, DIM, generator=g).to(device).requires_grad_()
    ents = synthetic_entities(n, seed=seed, device=device)
    return img, txt, ents, torch.arange(start, start + n, device=device)


def records(ents):
    return ents.to_records()


def test_push_and_candidates_order():
    bank = MemoryBank(10, DIM)
    b0, b1, b2 = batch(4, 0, 0), batch(4, 1, 4), batch(3, 2, 8)
    bank.push(*b0)
    bank.push(*b1)
    assert len(bank) == 8
    ci, ct, ce, cids = bank.candidates(*b2)
    assert ci.shape == (11, DIM) and len(ce) == 11
    assert torch.equal(cids, torch.tensor([8, 9, 10, 0, 1, 2, 3, 4, 5, 6, 7]))
    assert torch.equal(ci[:3], b2[0]) and torch.equal(ci[3:7], b0[0].detach())
    assert torch.equal(ct[7:], b1[1].detach())
    assert records(ce) == records(b2[2]) + records(b0[2]) + records(b1[2])
    assert ci.requires_grad  # the current batch keeps its graph
    ci.sum().backward()
    assert b2[0].grad is not None and b0[0].grad is None  # the bank is detached


def test_ring_overwrites_oldest_and_large_pushes():
    bank = MemoryBank(5, DIM)
    for k in range(4):
        bank.push(*batch(2, k, 2 * k))  # ids 0..7; the ring keeps the last 5: 3..7
    assert len(bank) == 5
    ids = bank.candidates(*batch(1, 9, 100))[3][1:]
    assert sorted(ids.tolist()) == [3, 4, 5, 6, 7]
    big = batch(12, 5, 50)
    bank.push(*big)  # more rows than the bank: the last 5 stay
    _, ct, ce, ids = bank.candidates(*batch(1, 9, 100))
    assert sorted(ids[1:].tolist()) == [57, 58, 59, 60, 61]
    order = ids[1:] - 50
    assert torch.equal(ct[1:], big[1].detach()[order])
    assert records(ce[slice(1, 6)]) == [records(big[2])[i] for i in order.tolist()]
    bank.reset()
    assert len(bank) == 0 and len(bank.candidates(*batch(2, 1))[2]) == 2


def test_stores_float32_under_autocast():
    bank = MemoryBank(8, DIM)
    img, txt, ents, ids = batch(3, 0)
    bank.push(img.bfloat16(), txt.bfloat16(), ents, ids)
    ci, ct, _, _ = bank.candidates(img.bfloat16(), txt.bfloat16(), ents, ids)
    assert ci.dtype == ct.dtype == torch.float32
    assert torch.equal(ci[3:], img.detach().bfloat16().float())
    empty = MemoryBank(8, DIM)
    assert empty.candidates(img.bfloat16(), txt, ents, ids)[0].dtype == torch.float32


def test_state_dict_roundtrip_gives_the_same_candidates(tmp_path):
    bank = MemoryBank(6, DIM)
    for k in range(5):
        bank.push(*batch(2, k, 2 * k))
    query = batch(2, 7, 100)
    path = tmp_path / "bank.pt"
    torch.save(bank.state_dict(), path)
    resumed = MemoryBank(6, DIM)
    resumed.load_state_dict(torch.load(path, weights_only=True))
    for a, b in zip(bank.candidates(*query), resumed.candidates(*query)):
        if isinstance(a, MetaEntities):
            assert records(a) == records(b)
        else:
            assert torch.equal(a, b)
    nxt = batch(3, 8, 200)  # the write position was restored too
    bank.push(*nxt)
    resumed.push(*nxt)
    assert torch.equal(bank.candidates(*query)[3], resumed.candidates(*query)[3])
    fresh = MemoryBank(6, DIM)
    fresh.load_state_dict(MemoryBank(6, DIM).state_dict())
    assert len(fresh) == 0
    resumed.load_state_dict(MemoryBank(6, DIM).state_dict())  # an empty state empties a filled bank
    assert len(resumed) == 0 and not resumed.allocated and resumed.device is None


def test_the_bank_is_a_module_with_buffers():
    """Its entries are buffers: they are in state_dict() (also of a module holding the bank),
    move with .to(), and a state of the earlier plain-dict format still loads."""
    holder = torch.nn.Module()
    holder.bank = MemoryBank(6, DIM)
    assert set(holder.state_dict()) == {f"bank.{k}" for k in ("img", "txt", "disease_bits", "adjective_bits",
                                                              "direction_bits", "ids", "_extra_state")}
    assert holder.state_dict()["bank.img"].shape == (0, DIM)  # nothing allocated before the first push
    for k in range(4):
        holder.bank.push(*batch(2, k, 2 * k))
    state = holder.state_dict()
    assert state["bank.img"].shape == (6, DIM) and state["bank._extra_state"]["count"] == 6
    assert dict(holder.bank.named_buffers())["ids"] is holder.bank.ids
    other = torch.nn.Module()
    other.bank = MemoryBank(6, DIM)
    other.load_state_dict(state)
    query = batch(2, 7, 100)
    assert torch.equal(other.bank.candidates(*query)[3], holder.bank.candidates(*query)[3])
    # the earlier format: a plain dict holding the `count` filled rows
    legacy = {**state["bank._extra_state"],
              **{k: state[f"bank.{k}"][:6].clone() for k in ("img", "txt", "disease_bits", "adjective_bits",
                                                             "direction_bits", "ids")}}
    partial = MemoryBank(6, DIM)
    partial.push(*batch(4, 1, 0))
    old_partial = {**partial.get_extra_state(), **{k: getattr(partial, k)[:4].clone() for k in
                                                   ("img", "txt", "disease_bits", "adjective_bits",
                                                    "direction_bits", "ids")}}
    for old, want in ((legacy, holder.bank), (old_partial, partial)):
        converted = MemoryBank(6, DIM)
        converted.load_state_dict(old)
        assert len(converted) == len(want)
        for a, b in zip(converted.candidates(*query), want.candidates(*query)):
            assert records(a) == records(b) if isinstance(a, MetaEntities) else torch.equal(a, b)
    empty_legacy = {"size": 6, "dim": DIM, "ptr": 0, "count": 0, "vocabulary": None,
                    **dict.fromkeys(("img", "txt", "disease_bits", "adjective_bits", "direction_bits", "ids"))}
    converted = MemoryBank(6, DIM)
    converted.load_state_dict(empty_legacy)
    assert len(converted) == 0


def test_load_state_dict_errors():
    bank = MemoryBank(4, DIM)
    bank.push(*batch(3, 0))
    state = bank.state_dict()
    with pytest.raises(ValueError, match="size=4"):
        MemoryBank(5, DIM).load_state_dict(state)
    with pytest.raises(ValueError, match="misses keys"):
        MemoryBank(4, DIM).load_state_dict({"size": 4})
    with pytest.raises(ValueError, match="different vocabulary"):
        MemoryBank(4, DIM, vocabulary=generic_vocabulary(2, 2, 2)).load_state_dict(state)
    broken = dict(state, img=state["img"][:2])
    with pytest.raises(ValueError, match="'img'"):
        MemoryBank(4, DIM).load_state_dict(broken)
    with pytest.raises(ValueError, match="'ids'"):
        MemoryBank(4, DIM).load_state_dict(dict(state, ids=state["ids"].int()))
    with pytest.raises(ValueError, match="position"):
        MemoryBank(4, DIM).load_state_dict(dict(state, _extra_state={**state["_extra_state"], "ptr": 1}))
    with pytest.raises(ValueError, match="misses keys"):
        MemoryBank(4, DIM).load_state_dict(dict(state, _extra_state={"size": 4}))
    with pytest.raises(TypeError, match="state must be a dict"):
        MemoryBank(4, DIM).load_state_dict([1, 2])


def test_bad_inputs():
    bank = MemoryBank(4, DIM)
    img, txt, ents, ids = batch(3, 0)
    with pytest.raises(ValueError, match=f"\\(rows, {DIM}\\)"):
        bank.push(img[:, :2], txt, ents, ids)
    with pytest.raises(ValueError, match="entities has 2"):
        bank.push(img, txt, ents[slice(0, 2)], ids)
    with pytest.raises(ValueError, match="ids must have shape"):
        bank.push(img, txt, ents, ids[:2])
    with pytest.raises(TypeError, match="ids must be an integer"):
        bank.push(img, txt, ents, ids.float())
    with pytest.raises(TypeError, match="MetaEntities"):
        bank.candidates(img, txt, records(ents), ids)
    with pytest.raises(ValueError, match="must match img"):
        bank.push(img, txt[:2], ents, ids)
    with pytest.raises(ValueError, match="size"):
        MemoryBank(0, DIM)
    bank.push(img, txt, ents, ids)
    other = MetaEntities.from_records([{}] * 3, vocabulary=generic_vocabulary(2, 2, 2))
    with pytest.raises(ValueError, match="vocabulary"):
        bank.push(img, txt, other, ids)


def test_objective_with_the_bank_never_pairs_a_sample_with_itself():
    """Batches revisit the same samples (ids): mining through the bank must exclude equal ids."""
    vocab = Vocabulary.default()
    objective = MedTrimObjective(TripletMiner(), MultimodalTripletLoss(margin=0.3))
    bank = MemoryBank(24, DIM, vocabulary=vocab)
    pool = batch(12, 3)  # a dataset of 12 samples, visited in shuffled batches of 6
    perm = torch.Generator().manual_seed(0)
    for step in range(6):
        pick = torch.randperm(12, generator=perm)[:6]
        img = pool[0].detach()[pick].clone().requires_grad_()
        txt = pool[1].detach()[pick].clone().requires_grad_()
        ents, ids = pool[2][pick], pool[3][pick]
        ci, ct, ce, cids = bank.candidates(img, txt, ents, ids)
        out = objective(img, txt, ents, cand_img=ci, cand_txt=ct, cand_entities=ce,
                        anchor_ids=ids, candidate_ids=cids, generator=torch.Generator().manual_seed(step))
        valid = out.triplets.valid
        assert torch.all(cids[out.triplets.positive[valid]] != ids[valid])
        assert torch.all(cids[out.triplets.negative[valid]] != ids[valid])
        # the same result as mining the concatenation directly
        ref = objective(img, txt, ents, cand_img=ci.detach(), cand_txt=ct.detach(), cand_entities=ce,
                        anchor_ids=ids, candidate_ids=cids, generator=torch.Generator().manual_seed(step))
        assert torch.equal(out.triplets.positive, ref.triplets.positive)
        assert torch.equal(out.triplets.negative, ref.triplets.negative)
        assert torch.allclose(out.loss, ref.loss)
        out.loss.backward()
        assert img.grad is not None and torch.isfinite(img.grad).all()
        if step > 0:
            assert len(ce) > 6 and out.stats["valid_triplets"].item() > 0
        bank.push(img, txt, ents, ids)
    assert len(bank) == 24


@cuda_only
def test_bank_follows_the_device():
    bank = MemoryBank(8, DIM)
    bank.push(*batch(3, 0))
    assert bank.device.type == "cpu"
    ci, _, ce, cids = bank.candidates(*batch(2, 1, 10, device="cuda"))
    assert ci.is_cuda and ce.device.type == "cuda" and cids.is_cuda and bank.device.type == "cuda"
    bank.push(*batch(2, 1, 10, device="cuda"))
    assert len(bank) == 5
    restored = MemoryBank(8, DIM)
    restored.load_state_dict({k: v.cpu() if isinstance(v, torch.Tensor) else v
                              for k, v in bank.state_dict().items()})
    assert restored.device.type == "cpu" and len(restored) == 5
    restored.to("cuda")
    assert restored.device.type == "cuda" and restored.ids.is_cuda
