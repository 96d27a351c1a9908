"""MultimodalTripletLoss: the MedTrim triplet loss over image and text embeddings (fused kernels)."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .. import ops
from ..utils.checks import check_number, check_tensor
from ..entities.triplets import Triplets
from .defaults import MARGIN_RANGE, OBJECTIVE_DEFAULTS

REDUCTIONS = ("mean", "sum", "none")


class MultimodalTripletLoss(torch.nn.Module):
    """The MedTrim triplet loss, tying image-image, image-text, text-text and text-image distances.

    With d(x, y) = 1 - cos(x, y) and margin m, for a triplet (a, p, n)::

        L_img = ([d(a_i,p_i) - d(a_i,n_i) + m]_+ + [d(a_i,p_t) - d(a_i,n_t) + m]_+) / 2
        L_txt = ([d(a_t,p_t) - d(a_t,n_t) + m]_+ + [d(a_t,p_i) - d(a_t,n_i) + m]_+) / 2

    The margin lies in [0, 2], as cosine distances do (``ValueError`` outside it): from 2 up
    every triplet is active whatever the embeddings, and a negative one hides misordered triplets.
    Call it as ``loss_img, loss_txt = crit(img_emb, txt_emb, triplets)``, where ``img_emb`` and
    ``txt_emb`` are ``(N, D)`` (row k of each belongs to sample k) and ``triplets`` is a
    :class:`~medtrim_ext.Triplets` (or any ``(anchor, positive, negative)`` of int tensors, ``(T,)``
    each). Anchors index ``img_emb``/``txt_emb``; positives and negatives index them too, or
    ``cand_img``/``cand_txt`` ``(M, D)`` when given (a memory bank, an all-gathered batch).

    - A triplet with any index -1 is skipped. ``reduction="mean"`` averages over the valid triplets;
      with none, both losses are 0 and still attached to the graph, so ``backward`` works.
      ``"sum"`` sums them, ``"none"`` returns per-triplet ``(T,)`` losses (0 for skipped ones).
    - Embeddings need not be normalized: the kernels normalize rows on the fly. A row whose L2
      norm is <= 1e-8 (a zero vector) has cosine 0 with everything and receives zero gradient.
    - float32, float16, bfloat16 (and float64) inputs; the arithmetic is float32 (float64 for
      float64 input) and so are the returned losses; gradients come back in the input dtype.
      Inside ``torch.autocast`` half-precision embeddings are used as they are (no copy to float32).
      ``img_emb`` and ``txt_emb`` of different dtypes are promoted to a common one.
    - Indices outside ``[-1, rows)`` and NaN/Inf embeddings raise an error naming the argument
      (checked with one device synchronisation per call).

    Gradients are computed by a fused backward kernel that sums, for every row, the contributions
    of all triplets that use it, in a fixed order: deterministic on CPU and CUDA. There is no
    second derivative: gradients taken with ``create_graph=True`` are right, but differentiating
    them again raises a ``RuntimeError`` (use :func:`medtrim_ext.ops.reference.multimodal_triplet_loss`,
    pure PyTorch, for gradient penalties through the loss).
    """

    def __init__(self, margin: float = OBJECTIVE_DEFAULTS.margin, reduction: str = "mean"):
        super().__init__()
        check_number("margin", margin)
        if not MARGIN_RANGE[0] <= margin <= MARGIN_RANGE[1]:
            raise ValueError(f"margin must be in [{MARGIN_RANGE[0]:g}, {MARGIN_RANGE[1]:g}] (cosine "
                             f"distances lie in [0, 2]), got {margin!r}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.margin = float(margin)
        self.reduction = reduction

    def extra_repr(self) -> str:
        return f"margin={self.margin}, reduction={self.reduction!r}"

    def forward(self, img_emb: torch.Tensor, txt_emb: torch.Tensor,
                triplets: Triplets | Sequence[torch.Tensor], *,
                cand_img: torch.Tensor | None = None,
                cand_txt: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        per_img, per_txt, triplets = self.per_triplet(img_emb, txt_emb, triplets,
                                                      cand_img=cand_img, cand_txt=cand_txt)
        return reduce_losses(per_img, per_txt, *triplets, self.reduction)

    def per_triplet(self, img_emb: torch.Tensor, txt_emb: torch.Tensor,
                    triplets: Triplets | Sequence[torch.Tensor], *,
                    cand_img: torch.Tensor | None = None, cand_txt: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Per-triplet ``(T,)`` losses (0 for skipped triplets) whatever the reduction, and the
        checked int64 (anchor, positive, negative) they were computed for."""
        img_emb, txt_emb, cand_img, cand_txt = _check_embeddings(img_emb, txt_emb, cand_img, cand_txt)
        indices = _check_triplets(triplets, img_emb.device)
        per_img, per_txt = ops.triplet_loss(img_emb, txt_emb, *indices, self.margin, cand_img, cand_txt)
        return per_img, per_txt, indices


def reduce_losses(per_img: torch.Tensor, per_txt: torch.Tensor, anchor: torch.Tensor,
                  positive: torch.Tensor, negative: torch.Tensor,
                  reduction: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``reduction`` to per-triplet losses (0 at skipped triplets); the mean divides by the
    number of valid triplets, at least 1, without a host synchronisation."""
    if reduction == "none":
        return per_img, per_txt
    if reduction == "sum":
        return per_img.sum(), per_txt.sum()
    count = ((anchor >= 0) & (positive >= 0) & (negative >= 0)).sum().clamp_min(1)
    return per_img.sum() / count, per_txt.sum() / count


def _check_embeddings(img, txt, cand_img, cand_txt):
    check_tensor("img_emb", img)
    check_tensor("txt_emb", txt)
    if (cand_img is None) != (cand_txt is None):
        raise ValueError("pass both cand_img and cand_txt, or neither")
    named = [("img_emb", img), ("txt_emb", txt)]
    if cand_img is not None:
        named += [("cand_img", check_tensor("cand_img", cand_img)), ("cand_txt", check_tensor("cand_txt", cand_txt))]
    for name, x in named:
        if x.dim() != 2:
            raise ValueError(f"{name} must be 2-D (rows, dim), got shape {tuple(x.shape)}")
        if not x.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
        if x.device != img.device:
            raise ValueError(f"{name} is on {x.device} but img_emb is on {img.device}")
        if x.shape[1] != img.shape[1]:
            raise ValueError(f"{name} has dimension {x.shape[1]} but img_emb has {img.shape[1]}")
    if img.shape[1] == 0:
        raise ValueError("embeddings need at least one dimension, got img_emb of shape "
                         f"{tuple(img.shape)}")
    if txt.shape[0] != img.shape[0]:
        raise ValueError(f"img_emb and txt_emb must have the same number of rows, got "
                         f"{img.shape[0]} and {txt.shape[0]}")
    if cand_img is not None and cand_img.shape[0] != cand_txt.shape[0]:
        raise ValueError(f"cand_img and cand_txt must have the same number of rows, got "
                         f"{cand_img.shape[0]} and {cand_txt.shape[0]}")
    dtype = img.dtype
    for _, x in named[1:]:
        dtype = torch.promote_types(dtype, x.dtype)
    if dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise TypeError(f"embeddings must be float32, float16, bfloat16 or float64, got {dtype}")
    cast = [x if x is None or x.dtype == dtype else x.to(dtype) for x in (img, txt, cand_img, cand_txt)]
    return tuple(cast)


def _check_triplets(triplets, device):
    if isinstance(triplets, torch.Tensor) or not isinstance(triplets, (tuple, list)) or len(triplets) != 3:
        raise TypeError("triplets must be a Triplets or an (anchor, positive, negative) sequence "
                        "of 1-D integer tensors")
    out = []
    lengths = set()
    for name, idx in zip(("anchor", "positive", "negative"), triplets):
        check_tensor(f"triplets.{name}", idx)
        if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
            raise TypeError(f"triplets.{name} must be an integer tensor, got {idx.dtype}")
        if idx.dim() != 1:
            raise ValueError(f"triplets.{name} must be 1-D, got shape {tuple(idx.shape)}")
        if idx.device != device:
            raise ValueError(f"triplets.{name} is on {idx.device} but the embeddings are on {device}")
        lengths.add(idx.shape[0])
        out.append(idx.to(torch.int64))
    if len(lengths) != 1:
        raise ValueError("triplets.anchor, .positive and .negative must have the same length, got "
                         f"{[t.shape[0] for t in out]}")
    return out
