"""ImageEncoder: any timm model as a pooled-feature image encoder, optionally from a local weights file."""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
from torch import nn

from .freezing import freeze_encoder, keep_frozen_in_eval, timm_layer_groups
from ..utils.checks import check_int, check_tensor

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


class ImageEncoder(nn.Module):
    """A timm model by name, built with ``pretrained=False, num_classes=0`` (pooled features).

    >>> enc = ImageEncoder("vit_tiny_patch16_224", in_chans=1, img_size=64, patch_size=8,
    ...                    embed_dim=64, depth=2, num_heads=2)
    >>> enc(torch.randn(4, 1, 64, 64)).shape        # (4, enc.feature_dim)

    - ``model_kwargs`` go to the timm constructor (architecture overrides for small models).
      ``img_size`` is passed to models that take it (ViT, Swin...); convolutional models, which
      take any size, are built without it.
    - ``checkpoint``: a local weights file (``.safetensors``, ``.pth``/``.pt``, ``.bin``, ``.ckpt``)
      holding a timm or plain state dict (also nested under ``state_dict``/``model``, EMA weights
      preferred, a DDP ``module.`` prefix removed). It is loaded through timm's pretrained-weight
      path, which adapts what it can: the input convolution to ``in_chans`` (3 -> 1 channel sums
      the RGB filters), position embeddings to ``img_size``, patch embeddings to ``patch_size``.
      Classifier weights in the file are dropped; every other parameter must load (strict), so a
      file for another architecture raises a ValueError naming the file and the offending keys.
      Nothing is ever downloaded.
    - ``freeze_layers=n`` freezes the stem and the first ``n`` blocks (see ``freezing``); with
      ``freeze_stem=False`` only the ``n`` blocks (patch embedding, position embedding and class
      token stay trainable, as in the published MedTrim code).
    - ViTs built with timm's default ``global_pool="token"`` give the [CLS] token after the final
      norm (like Hugging Face's ``ViTForImageClassification`` before its classifier).
    - ``forward`` takes float images ``(B, C, H, W)``; 1-channel images for a multi-channel model
      are repeated across channels (grayscale X-rays into an RGB model).
    """

    def __init__(self, name: str = "vit_base_patch16_224", *, checkpoint: str | Path | None = None,
                 in_chans: int = 3, img_size: int = 224, freeze_layers: int = 0,
                 freeze_stem: bool = True, **model_kwargs):
        super().__init__()
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a timm model name, got {name!r}")
        check_int("in_chans", in_chans)
        check_int("img_size", img_size)
        if not isinstance(freeze_stem, bool):
            raise TypeError(f"freeze_stem must be a bool, got {freeze_stem!r}")
        for reserved in ("pretrained", "num_classes", "pretrained_cfg_overlay", "features_only"):
            if reserved in model_kwargs:
                raise ValueError(f"{reserved!r} is set by ImageEncoder; do not pass it in model_kwargs")
        self.name, self.in_chans, self.img_size = name, in_chans, img_size
        self.model_kwargs = dict(model_kwargs)
        self.checkpoint = str(checkpoint) if checkpoint is not None else None
        self.model = _create(name, in_chans, img_size, self.model_kwargs, self.checkpoint)
        # with num_classes=0 the pooled features have head_hidden_size (a pre-logits layer) when
        # the model has one, else num_features
        self.feature_dim = int(getattr(self.model, "head_hidden_size", None) or self.model.num_features)
        self.freeze_layers, self.freeze_stem = freeze_layers, freeze_stem
        self._frozen = freeze_encoder(self, timm_layer_groups, freeze_layers, f"the image model {name!r}",
                                      freeze_stem=freeze_stem)

    @property
    def num_layers(self) -> int:
        """How many blocks ``freeze_layers`` counts (timm's coarse layer groups after the stem)."""
        return len(timm_layer_groups(self.model)[1])

    def config(self) -> dict:
        """Constructor arguments that rebuild this architecture (without the weights file: a
        checkpoint of the whole model carries the weights)."""
        return {"name": self.name, "in_chans": self.in_chans, "img_size": self.img_size,
                "freeze_layers": self.freeze_layers, "freeze_stem": self.freeze_stem,
                **self.model_kwargs}

    def train(self, mode: bool = True) -> "ImageEncoder":
        super().train(mode)
        keep_frozen_in_eval(self, self._frozen)
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(B, feature_dim)`` of float images ``(B, C, H, W)``."""
        check_tensor("images", images)
        if images.dim() != 4:
            raise ValueError(f"images must be 4-D (batch, channels, height, width), got shape "
                             f"{tuple(images.shape)}")
        if not images.dtype.is_floating_point:
            raise TypeError(f"images must be a floating-point tensor, got {images.dtype} "
                            "(convert and normalise the pixels first)")
        channels = images.shape[1]
        if channels != self.in_chans:
            if channels != 1:
                raise ValueError(f"images have {channels} channels but the image model {self.name!r} "
                                 f"takes {self.in_chans} (1-channel images are repeated)")
            images = images.expand(-1, self.in_chans, -1, -1)
        return self.model(images)


def _create(name: str, in_chans: int, img_size: int, model_kwargs: dict, checkpoint: str | None):
    import timm

    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r}")
    kwargs = dict(model_kwargs, in_chans=in_chans, num_classes=0)
    if checkpoint is not None:
        kwargs.update(pretrained=True,
                      pretrained_cfg_overlay=dict(state_dict=_read_checkpoint(name, checkpoint),
                                                  num_classes=0))
    try:
        try:
            model = timm.create_model(name, img_size=img_size, **kwargs)
        except TypeError as exc:
            if "img_size" not in str(exc):
                raise
            model = timm.create_model(name, **kwargs)  # a model without a fixed input size
    except TypeError as exc:
        raise ValueError(f"cannot build timm model {name!r} with {sorted(model_kwargs)}: {exc}") from None
    except RuntimeError as exc:  # load_state_dict: missing / unexpected keys, shape mismatch
        if checkpoint is None:
            raise
        msg = str(exc)
        msg = msg if len(msg) <= 1500 else msg[:1500] + " ..."
        raise ValueError(f"checkpoint file {checkpoint!r} does not fit timm model {name!r}: "
                         f"{msg}") from None
    # timm keeps the (copied) overlay in pretrained_cfg: drop the weights, remember the file
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and "state_dict" in cfg:
        cfg.pop("state_dict")
        cfg["file"] = checkpoint
    return model


def _read_checkpoint(name: str, path: str) -> dict:
    """The state dict in a local weights file, classifier weights removed."""
    import timm
    from timm.models import load_state_dict

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"checkpoint file {path!r} does not exist")
    if not p.name.endswith(CHECKPOINT_SUFFIXES):
        raise ValueError(f"checkpoint file {path!r} must end with one of {CHECKPOINT_SUFFIXES}")
    # a pickled (.pth/.pt/.bin/.ckpt) file is read with weights_only=True: it cannot run code
    safe = {"weights_only": True} if "weights_only" in inspect.signature(load_state_dict).parameters else {}
    try:
        state = load_state_dict(str(p), use_ema=True, **safe)
    except Exception as exc:  # safetensors / pickle errors of all kinds
        raise ValueError(f"cannot read checkpoint file {path!r}: {type(exc).__name__}: {exc}") from None
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ValueError(f"checkpoint file {path!r} does not hold a state dict of named tensors")
    cfg = timm.models.get_pretrained_cfg(name)
    classifiers = getattr(cfg, "classifier", None) or ()
    for head in ((classifiers,) if isinstance(classifiers, str) else classifiers):
        state = {k: v for k, v in state.items() if not k.startswith(head + ".")}
    return state
