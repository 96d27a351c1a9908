"""A pytorch-metric-learning miner that mines with this library's meta-entity score.

pytorch-metric-learning (PML) miners see one integer label per row, so two reports are either the
same class or not. :class:`MedTrimMiner` reads each label as the row's *dataset index* into a
:class:`~medtrim_ext.entities.MetaEntities` that it holds, and mines one (anchor, positive,
negative) triplet per anchor with :class:`~medtrim_ext.mining.TripletMiner`: the graded score of
diseases, adjectives and directions, its semi-hard rule and its tie-break, in the fused kernels.
It returns PML's ``indices_tuple``, so every PML loss that takes triplets uses it::

    from pytorch_metric_learning.losses import TripletMarginLoss
    from medtrim_ext.integrations.pml import MedTrimMiner

    miner = MedTrimMiner(entities)                  # MetaEntities of the whole dataset
    loss_fn = TripletMarginLoss(margin=0.2)
    emb = model(x[idx])                             # idx: the batch's dataset indices
    loss = loss_fn(emb, idx, indices_tuple=miner(emb, idx))

With ``ref_emb`` / ``ref_labels`` (a reference set, as PML's ``CrossBatchMemory`` passes), the
positives and negatives index the reference rows. ``ids`` (default: the dataset index) make sure
a sample never pairs with its own copy: the same index twice in a batch, or the batch's rows that
``CrossBatchMemory`` has just put in its memory.

Unlike PML's own miners, the triplets come from the reports' meta-entities alone: the embeddings
decide only the device and the number of rows ("Semi-hard" here is not pytorch-metric-learning's,
``docs/semantics.md``).

Needs the ``pml`` extra: ``pip install "medtrim_ext[pml]"``.
"""

from __future__ import annotations

import torch

from ..utils.extras import require_extra

require_extra("pml", "medtrim_ext.integrations.pml")   # names the extra, not "No module named ..."

from pytorch_metric_learning.miners import BaseMiner  # noqa: E402

from ..entities.meta_entities import MetaEntities  # noqa: E402
from ..mining import TripletMiner, Triplets  # noqa: E402
from ..utils.checks import check_generator, check_ids, check_instance, check_tensor  # noqa: E402


class MedTrimMiner(BaseMiner):
    """A PML miner (``BaseMiner``) whose labels are dataset indices into ``entities``.

    Args:
        entities: the meta-entities of the whole dataset; row ``i`` belongs to dataset index ``i``.
        ids: optional int tensor ``(len(entities),)``: the id of each dataset index (e.g. the
            study, when one report has several images). Rows with equal ids never pair; they also
            key the random tie-break, so a sample's choices follow the sample. Default: the index.
        miner: the :class:`~medtrim_ext.mining.TripletMiner` (score weights, ``threshold``,
            ``upper``, ``semi_hard_prob``, ``tie_break``, ``min_positive_score``); default: the
            published settings.
        generator: a CPU ``torch.Generator`` for the random choices (semi-hard draw, tie seed);
            each call draws from it, so a seeded generator mines the same triplets on a rerun.
            ``None``: torch's default generator.
        **kwargs: PML's ``BaseMiner`` options (e.g. ``collect_stats``). A ``distance`` is
            accepted but unused: the triplets do not depend on the embeddings.

    ``miner(embeddings, labels, ref_emb=None, ref_labels=None)`` returns ``(a, p, n)``, int64
    tensors on the embeddings' device: ``a`` indexes ``embeddings``, ``p`` and ``n`` index
    ``ref_emb`` (``embeddings`` without a reference set). Anchors without a full triplet (no
    candidate, nothing below ``upper``, a best score under ``min_positive_score``) are left out,
    as PML's miners leave out what they cannot mine. ``self.num_triplets`` is recorded as by
    every PML miner.
    """

    def __init__(self, entities: MetaEntities, ids: torch.Tensor | None = None,
                 miner: TripletMiner | None = None, generator: torch.Generator | None = None, **kwargs):
        super().__init__(**kwargs)
        check_instance("entities", entities, MetaEntities)
        if len(entities) == 0:
            raise ValueError("entities must hold at least one sample")
        self.entities = entities
        self.ids = (torch.arange(len(entities), device=entities.device) if ids is None
                    else check_ids("ids", ids, len(entities), entities.device))
        self.miner = TripletMiner() if miner is None else check_instance("miner", miner, TripletMiner)
        check_generator(generator)
        self.generator = generator
        self._on_device: dict = {}   # device -> (entities, ids) there, moved once

    def __repr__(self) -> str:
        return f"MedTrimMiner({len(self.entities)} samples, {self.miner!r})"

    def forward(self, embeddings, labels, ref_emb=None, ref_labels=None):
        """Check the arguments (errors name them), then PML's ``BaseMiner.forward``: no gradients,
        the reference set defaults to the batch, the output's shape is asserted."""
        check_tensor("embeddings", embeddings, dim=2)
        self._check_labels("labels", labels, embeddings.shape[0], "embeddings")
        if (ref_emb is None) != (ref_labels is None):
            raise ValueError("pass ref_emb and ref_labels together (the reference rows and their "
                             "dataset indices), or neither")
        if ref_emb is not None:
            check_tensor("ref_emb", ref_emb, dim=2)
            self._check_labels("ref_labels", ref_labels, ref_emb.shape[0], "ref_emb")
        return super().forward(embeddings, labels, ref_emb, ref_labels)

    def _check_labels(self, name: str, labels, rows: int, rows_of: str) -> None:
        check_tensor(name, labels)
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer tensor of dataset indices, got {labels.dtype}")
        if tuple(labels.shape) != (rows,):
            raise ValueError(f"{name} must have shape ({rows},), one dataset index per row of "
                             f"{rows_of}, got {tuple(labels.shape)}")
        n = len(self.entities)
        if rows and (int(labels.min()) < 0 or int(labels.max()) >= n):
            raise ValueError(f"{name} must be dataset indices in [0, {n}) (the miner's entities hold "
                             f"{n} samples), got values in [{int(labels.min())}, {int(labels.max())}]")

    def _here(self, device: torch.device) -> tuple[MetaEntities, torch.Tensor]:
        if device not in self._on_device:
            self._on_device[device] = (self.entities.to(device), self.ids.to(device))
        return self._on_device[device]

    def mine_triplets(self, embeddings, labels, ref_emb, ref_labels) -> Triplets:
        """All anchors' :class:`~medtrim_ext.mining.Triplets` (-1 where none), before PML's
        filtering; :meth:`mine` keeps the full ones."""
        entities, ids = self._here(embeddings.device)
        in_batch = ref_emb is embeddings and ref_labels is labels  # BaseMiner passes the batch itself
        labels = labels.to(embeddings.device, torch.int64)
        anchors = entities[labels]
        if in_batch:
            return self.miner(anchors, anchor_ids=ids[labels], generator=self.generator)
        ref_labels = ref_labels.to(embeddings.device, torch.int64)
        return self.miner(anchors, entities[ref_labels], anchor_ids=ids[labels],
                          candidate_ids=ids[ref_labels], generator=self.generator)

    def mine(self, embeddings, labels, ref_emb, ref_labels):
        """PML's hook: ``(anchor, positive, negative)`` index tensors (full triplets only)."""
        if ref_emb is not embeddings and ref_emb.device != embeddings.device:
            raise ValueError(f"ref_emb is on {ref_emb.device} but embeddings on {embeddings.device}")
        t = self.mine_triplets(embeddings, labels, ref_emb, ref_labels).only_valid()
        return t.anchor, t.positive, t.negative


__all__ = ["MedTrimMiner"]
