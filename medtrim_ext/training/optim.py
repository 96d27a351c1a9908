"""AdamW with sensible parameter groups, and the warm-up + decay learning-rate schedule."""

from __future__ import annotations

import math

import torch

from .config import OptimConfig


def _no_decay(name: str, p: torch.nn.Parameter) -> bool:
    # biases, norms, position embeddings, tokens and temperatures are not weight-decayed
    return p.ndim < 2 or any(k in name for k in ("pos_embed", "cls_token", "reg_token", "logit_scale"))


def build_optimizer(model: torch.nn.Module, objective: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW; the text encoder (and its projection) may use ``text_lr``. Biases, norms, position
    embeddings, tokens and temperatures get no weight decay, unless ``decay_all`` (every
    trainable parameter decayed, as the published MedTrim code's AdamW over ``model.parameters()``)."""
    text_lr = cfg.text_lr if cfg.text_lr is not None else cfg.lr
    groups: dict[tuple, list] = {}
    named = [(f"model.{n}", p) for n, p in model.named_parameters()]
    named += [(f"objective.{n}", p) for n, p in objective.named_parameters()]
    for name, p in named:
        if not p.requires_grad:
            continue
        lr = text_lr if name.startswith(("model.text", "model.text_proj")) else cfg.lr
        wd = cfg.weight_decay if cfg.decay_all or not _no_decay(name, p) else 0.0
        groups.setdefault((lr, wd), []).append(p)
    if not groups:
        raise ValueError("no trainable parameters (every layer frozen?)")
    param_groups = [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]
    return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                             weight_decay=cfg.weight_decay)


def lr_factor(step: int, total: int, cfg: OptimConfig) -> float:
    """Multiplier of the base learning rate at ``step``: linear warm-up, then cosine/linear decay
    to ``min_lr_ratio`` (or constant)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    span = max(total - cfg.warmup_steps, 1)
    progress = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1 - progress
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, cfg: OptimConfig):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, cfg))
