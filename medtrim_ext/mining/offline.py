"""Offline triplet mining as in the published MedTrim code: triplets mined in small random pools.

The published code mines before training: it draws random samples, splits them into small pools,
and in each pool mines one anchor's positive and semi-hard negative among the others by their
meta-entities alone. Two ways to use such triplets here:

- :class:`OfflineTripletSampler` yields batches of freshly mined triplets as dataset indices,
  forever (new pools for every batch); the training loop loads and encodes the ``3T`` samples and
  applies the triplet loss to the rows its :class:`~medtrim_ext.Triplets` name.
- :func:`mine_offline_triplets` mines a fixed list once, as the published generator does (sets of
  512 samples, 32 pools of 32 from each set); :func:`save_offline_triplets` /
  :func:`load_offline_triplets` keep it in a CSV file that a run reuses every epoch.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import torch

from ..entities.meta_entities import MetaEntities
from ..utils.checks import check_int
from .miner import TripletMiner, Triplets

_STATE_KEYS = ("seed", "step", "num_samples", "triplets_per_batch", "pool_size")
TRIPLETS_FORMAT = "medtrim_ext.offline_triplets/1"
# samples per mining pool, the published code's: the default here and of objective.pool_size
OFFLINE_POOL_SIZE = 32
TRIPLET_COLUMNS = ("anchor", "positive", "negative", "anchor_study", "positive_study", "negative_study")


class OfflineBatch(NamedTuple):
    """One batch of ``T`` offline triplets.

    ``indices``: ``3T`` dataset indices -- the anchors, then the positives, then the negatives.
    ``triplets``: rows into those ``3T`` samples (anchor ``k``, positive ``T + k``, negative
    ``2T + k``), ready for ``MultimodalTripletLoss(img_emb, txt_emb, triplets)``.
    """

    indices: list[int]
    triplets: Triplets


class OfflineTripletSampler:
    """Infinite, seeded, resumable iterator of :class:`OfflineBatch` es.

    For every triplet: a random pool of ``pool_size`` distinct samples (all samples when there are
    fewer), its first sample the anchor; the ``miner`` (its fused kernel) picks the anchor's
    positive and semi-hard negative among the rest of the pool (``anchor_ids``/``candidate_ids``
    are dataset indices, so the anchor never pairs with itself). A pool without a triplet (e.g.
    nothing scores below the miner's ``upper``) is redrawn, at most ``max_redraws`` times per
    triplet; then a ValueError says the data seems to have no triplets (e.g. all samples alike).

    >>> sampler = OfflineTripletSampler(entities, TripletMiner(), triplets_per_batch=32, seed=0)
    >>> batch = next(sampler)               # batch.indices: 96 dataset indices
    >>> state = sampler.state_dict()        # ... later: sampler.load_state_dict(state)

    Batch ``b`` depends only on ``(seed, b)`` (:meth:`batch`), so resuming at a step gives the same
    batches as an uninterrupted run. The entities are best kept on the CPU: each pool is one small
    kernel call.
    """

    def __init__(self, entities: MetaEntities, miner: TripletMiner, *, triplets_per_batch: int,
                 pool_size: int = OFFLINE_POOL_SIZE, seed: int = 0, max_redraws: int = 100):
        if not isinstance(entities, MetaEntities):
            raise TypeError(f"entities must be MetaEntities, got {type(entities).__name__}")
        if not isinstance(miner, TripletMiner):
            raise TypeError(f"miner must be a TripletMiner, got {type(miner).__name__}")
        for name, value, low in (("triplets_per_batch", triplets_per_batch, 1), ("pool_size", pool_size, 3),
                                 ("seed", seed, 0), ("max_redraws", max_redraws, 1)):
            check_int(name, value, minimum=low)
        if len(entities) < 3:
            raise ValueError(f"offline mining needs at least 3 samples (anchor, positive, negative), "
                             f"got {len(entities)}")
        self.entities, self.miner = entities, miner
        self.triplets_per_batch, self.pool_size = triplets_per_batch, pool_size
        self.seed, self.max_redraws = seed, max_redraws
        self.step = 0  # the next batch __next__ yields

    def __repr__(self) -> str:
        return (f"OfflineTripletSampler(n={len(self.entities)}, triplets_per_batch={self.triplets_per_batch}, "
                f"pool_size={self.pool_size}, seed={self.seed}, step={self.step})")

    def __iter__(self) -> Iterator[OfflineBatch]:
        return self

    def __next__(self) -> OfflineBatch:
        out = self.batch(self.step)
        self.step += 1
        return out

    def batch(self, b: int) -> OfflineBatch:
        """Batch number ``b`` (a pure function of ``seed`` and ``b``; does not move the position)."""
        if isinstance(b, bool) or not isinstance(b, int) or b < 0:
            raise ValueError(f"the batch number must be an int >= 0, got {b!r}")
        t_count = self.triplets_per_batch
        n = len(self.entities)
        rng = np.random.default_rng([self.seed, b])
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        anchors, positives, negatives = _mine_pools(self.entities, self.miner, n, t_count,
                                                    min(self.pool_size, n), rng, generator,
                                                    self.max_redraws)
        rows = torch.arange(t_count)
        return OfflineBatch(anchors + positives + negatives,
                            Triplets(rows, rows + t_count, rows + 2 * t_count))

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The position (and what it is only valid for)."""
        return {"seed": self.seed, "step": self.step, "num_samples": len(self.entities),
                "triplets_per_batch": self.triplets_per_batch, "pool_size": self.pool_size}

    def load_state_dict(self, state: dict) -> None:
        """Resume at the saved position; the seed, data size and batch shape must be the same."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict, got {type(state).__name__}")
        missing = [k for k in _STATE_KEYS if k not in state]
        if missing:
            raise ValueError(f"offline sampler state misses keys {missing}")
        mine = self.state_dict()
        for key in ("seed", "num_samples", "triplets_per_batch", "pool_size"):
            if state[key] != mine[key]:
                raise ValueError(f"offline sampler state has {key}={state[key]!r} but this sampler "
                                 f"{key}={mine[key]!r}")
        step = state["step"]
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"offline sampler state has an invalid step {step!r}")
        self.step = step


def _mine_pools(entities: MetaEntities, miner: TripletMiner, population, count: int, pool: int,
                rng: np.random.Generator, generator: torch.Generator, max_redraws: int):
    """``count`` triplets, each mined in its own pool of ``pool`` distinct members of
    ``population`` (an int n: range(n); or an array of dataset indices) drawn by ``rng``, the
    pool's first member the anchor (a uniformly random member). A pool without a triplet is
    redrawn, at most ``max_redraws`` times. Returns (anchors, positives, negatives) lists."""
    device = entities.device
    anchors, positives, negatives = [-1] * count, [-1] * count, [-1] * count
    pending = list(range(count))
    for _ in range(max_redraws):
        pools = np.stack([rng.choice(population, size=pool, replace=False) for _ in pending])
        # one gather for all pools; each pool is then a slice of it
        flat = torch.from_numpy(pools.reshape(-1)).to(device)
        members = entities[flat]
        found = []
        for j in range(len(pending)):
            lo = j * pool
            cands, ids = members[slice(lo, lo + pool)], flat[lo:lo + pool]
            mined = miner(cands[slice(0, 1)], cands, anchor_ids=ids[:1], candidate_ids=ids,
                          generator=generator)
            found.append(torch.stack([mined.positive[0], mined.negative[0]]))
        pos_neg = torch.stack(found).cpu().tolist()  # one synchronisation per round
        still = []
        for j, (k, (p, q)) in enumerate(zip(pending, pos_neg)):
            if p >= 0 and q >= 0:
                anchors[k], positives[k], negatives[k] = (int(pools[j, 0]), int(pools[j, p]),
                                                          int(pools[j, q]))
            else:
                still.append(k)
        pending = still
        if not pending:
            return anchors, positives, negatives
    raise ValueError(f"no triplet in {max_redraws} random pools of {pool} samples: the data "
                     "seem to have no (anchor, positive, negative) triplets for this miner (e.g. "
                     "all samples have the same meta-entities, or none scores below upper="
                     f"{miner.upper})")


# -- triplets mined once (the published generator) -----------------------------------------------
def mine_offline_triplets(entities: MetaEntities, miner: TripletMiner, *, num_triplets: int,
                          pool_size: int = OFFLINE_POOL_SIZE, set_size: int = 0, seed: int = 0,
                          max_redraws: int = 100, progress: bool = False) -> torch.Tensor:
    """Mine ``num_triplets`` triplets once, as the published generator does; ``(N, 3)`` int64
    dataset indices (anchor, positive, negative).

    The triplets come in sets: set ``k`` draws ``set_size`` distinct samples (``0``: the whole
    data), then ``pool_size`` pools of ``pool_size`` distinct samples from that set (pools of one
    set may overlap), each with one random anchor whose positive and negative the ``miner`` (its
    fused kernel, random tie rule and ``generator``) picks among the rest of the pool. With the
    published defaults (``set_size=512, pool_size=32``) that is ``TripletGenerator``'s
    ``big_batch_size=512`` and ``mini_batch_size=32``, used as both the pool size and the number
    of pools per set; 40,000 sets give 1,280,000 triplets. The last set is cut short when
    ``num_triplets`` is not a multiple of ``pool_size``.

    Set ``k`` depends only on ``(seed, k)``. A pool without a triplet (all others score
    ``>= upper``; the published code raises there) is redrawn from its set, at most
    ``max_redraws`` times. ``progress``: a tqdm bar.
    """
    if not isinstance(entities, MetaEntities):
        raise TypeError(f"entities must be MetaEntities, got {type(entities).__name__}")
    if not isinstance(miner, TripletMiner):
        raise TypeError(f"miner must be a TripletMiner, got {type(miner).__name__}")
    for name, value, low in (("num_triplets", num_triplets, 1), ("pool_size", pool_size, 3),
                             ("set_size", set_size, 0), ("seed", seed, 0), ("max_redraws", max_redraws, 1)):
        check_int(name, value, minimum=low)
    n = len(entities)
    if n < 3:
        raise ValueError(f"offline mining needs at least 3 samples (anchor, positive, negative), got {n}")
    if set_size > n:
        raise ValueError(f"set_size={set_size} is larger than the {n} samples")
    if 0 < set_size < pool_size:
        raise ValueError(f"set_size={set_size} must be >= pool_size={pool_size}")
    from ..utils.progress import progress_bar

    out = torch.empty(num_triplets, 3, dtype=torch.int64)
    done, k = 0, 0
    with progress_bar(total=num_triplets, desc="mining offline triplets", unit="triplet",
                      enabled=progress, dynamic_ncols=True) as bar:
        while done < num_triplets:
            rng = np.random.default_rng([seed, k])
            population = rng.choice(n, size=set_size, replace=False) if set_size else n
            generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
            count = min(pool_size, num_triplets - done)
            pool = min(pool_size, set_size or n)
            a, p, q = _mine_pools(entities, miner, population, count, pool, rng, generator, max_redraws)
            out[done:done + count] = torch.tensor([a, p, q], dtype=torch.int64).T
            done, k = done + count, k + 1
            bar.update(count)
    return out


def offline_triplets_meta(study_ids: Sequence[str], miner: TripletMiner, *, num_triplets: int,
                          pool_size: int, set_size: int, seed: int) -> dict:
    """What a triplets file is valid for: the data (number of samples, a hash of the study ids in
    order), the miner's settings and the mining arguments."""
    digest = hashlib.sha256("\n".join(map(str, study_ids)).encode()).hexdigest()
    return {"format": TRIPLETS_FORMAT, "num_samples": len(study_ids), "study_ids_sha256": digest,
            "num_triplets": num_triplets, "pool_size": pool_size, "set_size": set_size, "seed": seed,
            "w_dis": miner.w_dis, "w_adj": miner.w_adj, "w_dir": miner.w_dir,
            "threshold": miner.threshold, "upper": miner.upper, "semi_hard_prob": miner.semi_hard_prob,
            "tie_break": miner.tie_break, "min_positive_score": miner.min_positive_score}


def save_offline_triplets(path: str | Path, triplets: torch.Tensor, study_ids: Sequence[str],
                          meta: dict) -> Path:
    """Write ``triplets`` (``(N, 3)`` dataset indices) atomically as CSV: a first line ``# {meta
    as JSON}``, then the columns ``anchor, positive, negative`` (dataset indices) and
    ``anchor_study, positive_study, negative_study`` (their study ids)."""
    from ..utils.extras import import_extra
    from ..utils.io import atomic_write, escape_csv_cell

    pd = import_extra("pandas", "train", "writing offline triplet files")

    t = torch.as_tensor(triplets).to(torch.int64).cpu()
    if t.dim() != 2 or t.shape[1] != 3:
        raise ValueError(f"triplets must be (N, 3) dataset indices, got shape {tuple(t.shape)}")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= len(study_ids)):
        raise ValueError(f"triplets hold indices outside [0, {len(study_ids)})")
    idx = t.numpy()
    # study ids come from the data: a spreadsheet must not run one (load_offline_triplets unescapes)
    ids = np.asarray([escape_csv_cell(str(s)) for s in study_ids], dtype=object)
    frame = pd.DataFrame({"anchor": idx[:, 0], "positive": idx[:, 1], "negative": idx[:, 2],
                          "anchor_study": ids[idx[:, 0]], "positive_study": ids[idx[:, 1]],
                          "negative_study": ids[idx[:, 2]]}, columns=list(TRIPLET_COLUMNS))
    path = Path(path)
    with atomic_write(path, newline="") as f:
        f.write("# " + json.dumps(meta, sort_keys=True) + "\n")
        frame.to_csv(f, index=False)
    return path


def load_offline_triplets(path: str | Path, study_ids: Sequence[str], meta: dict) -> torch.Tensor:
    """The ``(N, 3)`` int64 triplets of a file written by :func:`save_offline_triplets`, after
    checking that it was mined for this data and these settings (``meta``, from
    :func:`offline_triplets_meta`) and that its study ids match ``study_ids``; a ValueError
    naming the file and the difference otherwise."""
    from ..utils.extras import import_extra

    from ..utils.io import unescape_csv_cell

    pd = import_extra("pandas", "train", "reading offline triplet files")
    path = Path(path)
    hint = "delete it to mine again, or use another train.out_dir"
    try:
        with open(path, encoding="utf-8", newline="") as f:
            first = f.readline()
            if not first.startswith("# "):
                raise ValueError("no '# {...}' header line")
            saved = json.loads(first[2:])
            frame = pd.read_csv(f, dtype={c: str for c in TRIPLET_COLUMNS[3:]}, keep_default_na=False)
        for col in TRIPLET_COLUMNS[3:]:
            if col in frame.columns:   # the ids as given, before save_offline_triplets escaped them
                frame[col] = [unescape_csv_cell(c) for c in frame[col]]
    except FileNotFoundError:
        raise ValueError(f"offline triplets file {str(path)!r} does not exist") from None
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise ValueError(f"offline triplets file {str(path)!r} cannot be read ({exc}); {hint}") from None
    if not isinstance(saved, dict) or saved.get("format") != TRIPLETS_FORMAT:
        raise ValueError(f"offline triplets file {str(path)!r} is not a {TRIPLETS_FORMAT} file; {hint}")
    for key in meta:
        if saved.get(key) != meta[key]:
            what = "the training data differ" if key in ("num_samples", "study_ids_sha256") else "settings differ"
            raise ValueError(f"offline triplets file {str(path)!r} was mined with {key}={saved.get(key)!r} "
                             f"but this run has {key}={meta[key]!r} ({what}); {hint}")
    if list(frame.columns) != list(TRIPLET_COLUMNS) or len(frame) != meta["num_triplets"]:
        raise ValueError(f"offline triplets file {str(path)!r} must hold {meta['num_triplets']} rows of "
                         f"{list(TRIPLET_COLUMNS)}, has {len(frame)} of {list(frame.columns)}; {hint}")
    try:
        idx = frame[list(TRIPLET_COLUMNS[:3])].to_numpy(dtype=np.int64)
    except (ValueError, TypeError):
        raise ValueError(f"offline triplets file {str(path)!r} has non-integer indices; {hint}") from None
    n = len(study_ids)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"offline triplets file {str(path)!r} has indices outside [0, {n}); {hint}")
    ids = np.asarray([str(s) for s in study_ids], dtype=object)
    for j, col in enumerate(TRIPLET_COLUMNS[3:]):
        bad = np.flatnonzero(ids[idx[:, j]] != frame[col].to_numpy(dtype=object))
        if bad.size:
            r = int(bad[0])
            raise ValueError(f"offline triplets file {str(path)!r} row {r}: {col} {frame[col].iloc[r]!r} is "
                             f"not the study id {ids[idx[r, j]]!r} of sample {idx[r, j]}; {hint}")
    return torch.from_numpy(idx)
