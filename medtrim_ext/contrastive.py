"""InfoNCELoss: the symmetric CLIP contrastive loss, the baseline MedTrim is compared with."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .mining import check_ids


class InfoNCELoss(nn.Module):
    """Symmetric InfoNCE (CLIP) over L2-normalised image and text embeddings.

    With logit scale s = exp(log_scale) (clamped to ``max_logit_scale``), image query k scores
    every candidate text j as ``s * cos(img_k, cand_txt_j)`` and text query k every candidate
    image; the loss is the mean over the local queries of ``(CE_i2t + CE_t2i) / 2``, the target of
    query k being its own pair at ``targets[k]`` among the candidates.

    >>> crit = InfoNCELoss(temperature=0.07)
    >>> loss = crit(img_emb, txt_emb)                          # in-batch: candidates = the batch
    >>> loss = crit(img_emb, txt_emb, cand_img=all_img, cand_txt=all_txt,
    ...             targets=rank * B + torch.arange(B))        # all-gathered global batch

    - Without candidates the batch is its own candidate set (targets ``arange(B)``); with
      ``cand_img``/``cand_txt`` ``(M, D)`` the default targets are also ``arange(B)`` (the local
      batch first, as ``MemoryBank.candidates`` returns it).
    - ``learnable=True``: the log scale is a parameter, initialised to ``log(1 / temperature)``;
      otherwise a fixed buffer. The clamp stops its gradient above ``max_logit_scale`` (CLIP: 100).
    - The arithmetic is float32 whatever the embeddings' dtype (bf16 under autocast); the loss is
      a float32 scalar. Wrong shapes, devices, targets out of range and NaN/Inf embeddings raise
      errors naming the argument (one host synchronisation per call).
    """

    def __init__(self, temperature: float = 0.07, learnable: bool = True, max_logit_scale: float = 100.0):
        super().__init__()
        for name, value in (("temperature", temperature), ("max_logit_scale", max_logit_scale)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value <= 0:
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        if 1.0 / temperature > max_logit_scale:
            raise ValueError(f"1 / temperature = {1.0 / temperature:g} exceeds max_logit_scale="
                             f"{max_logit_scale:g}")
        init = torch.tensor(math.log(1.0 / temperature), dtype=torch.float32)
        if learnable:
            self.log_scale = nn.Parameter(init)
        else:
            self.register_buffer("log_scale", init)
        self.learnable = bool(learnable)
        self.max_logit_scale = float(max_logit_scale)

    def extra_repr(self) -> str:
        return (f"temperature={1.0 / self.logit_scale.item():.4g}, learnable={self.learnable}, "
                f"max_logit_scale={self.max_logit_scale}")

    @property
    def logit_scale(self) -> torch.Tensor:
        """The current scale s = 1 / temperature (0-d, clamped, differentiable where learnable)."""
        return self.log_scale.clamp(max=math.log(self.max_logit_scale)).exp()

    def forward(self, img: torch.Tensor, txt: torch.Tensor, *, cand_img: torch.Tensor | None = None,
                cand_txt: torch.Tensor | None = None, targets: torch.Tensor | None = None) -> torch.Tensor:
        img, txt, cand_img, cand_txt, targets = _check(img, txt, cand_img, cand_txt, targets)
        # float32 logits even under autocast (which would run the matmuls in half precision)
        with torch.autocast(img.device.type, enabled=False):
            img_n, txt_n = F.normalize(img.float(), dim=1), F.normalize(txt.float(), dim=1)
            cand_img_n = img_n if cand_img is None else F.normalize(cand_img.float(), dim=1)
            cand_txt_n = txt_n if cand_txt is None else F.normalize(cand_txt.float(), dim=1)
            scale = self.logit_scale.float().to(img_n.device)
            i2t = F.cross_entropy(scale * img_n @ cand_txt_n.T, targets)
            t2i = F.cross_entropy(scale * txt_n @ cand_img_n.T, targets)
        return (i2t + t2i) / 2


def _check(img, txt, cand_img, cand_txt, targets):
    named = [("img", img), ("txt", txt)]
    if (cand_img is None) != (cand_txt is None):
        raise ValueError("pass both cand_img and cand_txt, or neither")
    if cand_img is not None:
        named += [("cand_img", cand_img), ("cand_txt", cand_txt)]
    for name, x in named:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
        if x.dim() != 2:
            raise ValueError(f"{name} must be 2-D (rows, dim), got shape {tuple(x.shape)}")
        if x.device != img.device:
            raise ValueError(f"{name} is on {x.device} but img is on {img.device}")
        if x.shape[1] != img.shape[1]:
            raise ValueError(f"{name} has dimension {x.shape[1]} but img has {img.shape[1]}")
    b = img.shape[0]
    if b == 0 or img.shape[1] == 0:
        raise ValueError(f"img must have at least one row and one dimension, got shape {tuple(img.shape)}")
    if txt.shape[0] != b:
        raise ValueError(f"img and txt must have the same number of rows, got {b} and {txt.shape[0]}")
    m = b
    if cand_img is not None:
        if cand_img.shape[0] != cand_txt.shape[0]:
            raise ValueError(f"cand_img and cand_txt must have the same number of rows, got "
                             f"{cand_img.shape[0]} and {cand_txt.shape[0]}")
        m = cand_img.shape[0]
    if targets is None:
        if m < b:
            raise ValueError(f"the default targets arange({b}) need at least {b} candidates, got {m}; "
                             "pass targets")
        targets = torch.arange(b, device=img.device)
    else:
        targets = check_ids("targets", targets, b, img.device, owner="img is")
    # one host synchronisation for the value checks
    checks = [((targets < 0) | (targets >= m)).any()]
    checks += [~torch.isfinite(x).all() for _, x in named]
    flags = torch.stack(checks).tolist()
    if flags[0]:
        raise ValueError(f"targets must lie in [0, {m}) (the candidate rows)")
    for (name, _), bad in zip(named, flags[1:]):
        if bad:
            raise ValueError(f"{name} contains NaN or Inf")
    return img, txt, cand_img, cand_txt, targets
