"""Freezing the first layers of an encoder, as the MedTrim paper does with its pretrained encoders.

A frozen encoder keeps its stem (image: patch embedding, position embedding, class/register tokens;
text: the embeddings) and its first ``n`` blocks/layers fixed (with ``freeze_stem=False``, only the
``n`` blocks/layers: the published MedTrim code freezes ``encoder.layer[0:2]`` of both models and
leaves the embeddings and the ViT patch stem trainable):

- their parameters get ``requires_grad = False`` (optimizers built from
  ``p for p in model.parameters() if p.requires_grad`` skip them, and DDP ignores them);
- the modules whose parameters are all frozen stay in eval mode when the encoder is put in train
  mode (:func:`keep_frozen_in_eval`). Choice: a frozen part is a fixed function. In train mode its
  dropout would add noise it cannot learn from and, for CNN stems, BatchNorm would keep updating
  its running statistics -- a "frozen" layer whose output drifts. Eval mode avoids both.

Layers of timm models come from the model's own ``group_matcher(coarse=True)`` (the grouping timm
uses for layer-wise learning-rate decay): the ``stem`` group, then one group per block (ViT: each
transformer block; ResNet/ConvNeXt: each stage), with anything timm attaches to the previous group
(the final norm of a ViT) merged into the last block; parameters matched by no rule (the head) are
never frozen. Layers of transformers models are the entries of the encoder's layer list (BERT:
``encoder.layer``), found generically as the ``ModuleList`` of ``config.num_hidden_layers`` modules.
"""

from __future__ import annotations

import re
from typing import Iterable

import torch
from torch import nn

# timm's marker for "belongs to the previous group" (timm.models._manipulate.MATCH_PREV_GROUP)
_MATCH_PREV_GROUP = 99999.0


def check_freeze_count(n, depth: int, what: str) -> int:
    """``n`` as an int in ``[0, depth]``; a ValueError naming the value otherwise."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"freeze_layers must be an int, got {n!r}")
    if n < 0:
        raise ValueError(f"freeze_layers must be >= 0, got {n}")
    if n > depth:
        raise ValueError(f"freeze_layers={n} is larger than the {depth} layers of {what}")
    return n


def timm_layer_groups(model: nn.Module) -> tuple[list[str], list[list[str]]]:
    """(stem parameter names, [parameter names of block 0, block 1, ...]) of a timm model.

    Uses the model's ``group_matcher(coarse=True)``; raises ValueError for a model without one.
    """
    matcher_fn = getattr(model, "group_matcher", None)
    if not callable(matcher_fn):
        raise ValueError(f"{type(model).__name__} has no group_matcher(): cannot tell its layers apart")
    matcher = matcher_fn(coarse=True)
    if not isinstance(matcher, dict):
        raise ValueError(f"{type(model).__name__}.group_matcher() is not a dict of rules")
    rules = []  # (regex, group ordinal, suffix, group name), in timm's order
    for ordinal, (group, spec) in enumerate(matcher.items()):
        if spec is None:
            continue
        for regex, suffix in (spec if isinstance(spec, (list, tuple)) else [(spec, None)]):
            rules.append((re.compile(regex), float(ordinal), suffix, group))

    stem: list[str] = []
    keyed: dict[tuple, list[str]] = {}
    for name, _ in model.named_parameters():
        for regex, ordinal, suffix, group in rules:
            match = regex.match(name)
            if match:
                if group == "stem":
                    stem.append(name)
                else:
                    key = (ordinal, *(float(g) for g in match.groups() if g is not None),
                           *(float(s) for s in (suffix or ())))
                    keyed.setdefault(key, []).append(name)
                break
        # parameters no rule matches (the head, timm's "inf" group) are not layers
    blocks: list[list[str]] = []
    for key in sorted(keyed):
        if blocks and key[-1] == _MATCH_PREV_GROUP:
            blocks[-1].extend(keyed[key])
        else:
            blocks.append(list(keyed[key]))
    return stem, blocks


def hf_layer_groups(model: nn.Module) -> tuple[list[str], list[list[str]]]:
    """(embedding parameter names, [parameter names of layer 0, layer 1, ...]) of a transformers
    encoder: ``model.embeddings`` (else the input embeddings) and the ``ModuleList`` of
    ``config.num_hidden_layers`` layers (BERT/RoBERTa: ``encoder.layer``)."""
    names = {id(p): n for n, p in model.named_parameters()}
    embeddings = getattr(model, "embeddings", None)
    if not isinstance(embeddings, nn.Module):
        embeddings = model.get_input_embeddings()
    stem = [names[id(p)] for p in embeddings.parameters() if id(p) in names]
    depth = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    candidates = [(name, m) for name, m in model.named_modules()
                  if isinstance(m, nn.ModuleList) and len(m) == depth]
    if not candidates:
        raise ValueError(f"cannot find the {depth} layers of {type(model).__name__} "
                         "(no ModuleList of config.num_hidden_layers modules)")
    # the list of layers holds most of the parameters (not e.g. a list of per-layer norms)
    _, layers = max(candidates, key=lambda nm: sum(p.numel() for p in nm[1].parameters()))
    return stem, [[names[id(p)] for p in layer.parameters() if id(p) in names] for layer in layers]


def freeze_first_layers(model: nn.Module, stem: list[str], blocks: list[list[str]], n: int,
                        what: str, *, freeze_stem: bool = True) -> list[str]:
    """Freeze ``stem`` (unless ``freeze_stem`` is False) plus the first ``n`` of ``blocks``
    (nothing for ``n == 0``). Returns the names of the maximal submodules whose parameters are
    now all frozen (see :func:`keep_frozen_in_eval`)."""
    n = check_freeze_count(n, len(blocks), what)
    if n == 0:
        return []
    frozen = set(stem if freeze_stem else ()).union(*blocks[:n])
    for name, p in model.named_parameters():
        if name in frozen:
            p.requires_grad_(False)
    return frozen_modules(model)


def freeze_encoder(encoder: nn.Module, layer_groups, n: int, what: str, *,
                   freeze_stem: bool = True) -> list[str]:
    """Freeze the stem and the first ``n`` blocks of ``encoder.model`` (``layer_groups(model)``
    gives them: :func:`timm_layer_groups`, :func:`hf_layer_groups`) and put the frozen parts in
    eval mode; returns their names under ``encoder``, for its ``train()`` to keep them there."""
    if not n:
        return []
    stem, blocks = layer_groups(encoder.model)
    frozen = [f"model.{m}" if m else "model" for m in
              freeze_first_layers(encoder.model, stem, blocks, n, what, freeze_stem=freeze_stem)]
    keep_frozen_in_eval(encoder, frozen)
    return frozen


def frozen_modules(model: nn.Module) -> list[str]:
    """Names of the maximal submodules that have parameters and all of them frozen."""
    out: list[str] = []
    for name, module in model.named_modules():
        if name == "" or any(name.startswith(done + ".") for done in out):
            continue
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            out.append(name)
    return out


def keep_frozen_in_eval(model: nn.Module, names: Iterable[str]) -> None:
    """Put the named submodules of ``model`` in eval mode (called after every ``train()``)."""
    for name in names:
        model.get_submodule(name).eval()


def trainable_parameters(module: nn.Module) -> list[torch.nn.Parameter]:
    """The parameters an optimizer should get (``requires_grad`` True)."""
    return [p for p in module.parameters() if p.requires_grad]
