"""DualEncoder: an image encoder and a text encoder projected into one embedding space."""

from __future__ import annotations

import copy
from typing import Mapping

import torch
from torch import nn

from .image import ImageEncoder
from ..utils.checks import check_int
from .text import TextEncoder

PROJECTIONS = ("linear", "mlp", "none")
CONFIG_KEYS = ("image", "text", "embed_dim", "projection", "image_projection", "text_projection")
TEXT_KEYS = ("pretrained", "config", "freeze_layers", "freeze_stem", "pooling", "vocab_size")


def projection_head(in_dim: int, out_dim: int, kind: str, name: str = "projection") -> nn.Module:
    """``"linear"``: one linear map; ``"mlp"``: linear (in_dim -> in_dim), GELU, linear (-> out_dim);
    ``"none"``: the identity, only when ``in_dim == out_dim`` (a ValueError naming ``name``
    otherwise)."""
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, in_dim), nn.GELU(), nn.Linear(in_dim, out_dim))
    if kind == "none":
        if in_dim != out_dim:
            raise ValueError(f"{name}='none' uses the encoder's {in_dim}-d features as the embedding, "
                             f"so embed_dim must be {in_dim}, got {out_dim}")
        return nn.Identity()
    raise ValueError(f"{name} must be one of {PROJECTIONS}, got {kind!r}")


class DualEncoder(nn.Module):
    """Image and text encoders with projections to a shared ``embed_dim``.

    ``projection`` is the head of both modalities (``"linear"``, ``"mlp"`` or ``"none"``: the
    encoder's features are the embedding, which needs ``feature_dim == embed_dim``);
    ``image_projection`` / ``text_projection`` override it per modality (None: ``projection``).
    The published MedTrim code: a new linear 768 -> 768 head on the ViT, nothing on BERT's pooler
    output (``embed_dim=768, image_projection="linear", text_projection="none"``).

    >>> model = DualEncoder.from_config({
    ...     "image": {"name": "vit_tiny_patch16_224", "in_chans": 1, "img_size": 64, "patch_size": 8,
    ...               "embed_dim": 64, "depth": 2, "num_heads": 2},
    ...     "text": {"config": {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2,
    ...                         "num_attention_heads": 2, "intermediate_size": 64},
    ...              "vocab_size": 500},
    ...     "embed_dim": 32, "projection": "linear"})
    >>> img_emb, txt_emb = model(images, input_ids, attention_mask)   # (B, 32) each

    The embeddings are NOT normalised: the losses (``MultimodalTripletLoss``, ``InfoNCELoss``)
    normalise them. :meth:`to_config` gives the plain dict that :meth:`from_config` rebuilds the
    architecture from (store it in a checkpoint next to the ``state_dict``).
    """

    def __init__(self, image: ImageEncoder, text: TextEncoder, embed_dim: int = 512,
                 projection: str = "linear", *, image_projection: str | None = None,
                 text_projection: str | None = None):
        super().__init__()
        if not isinstance(image, ImageEncoder):
            raise TypeError(f"image must be an ImageEncoder, got {type(image).__name__}")
        if not isinstance(text, TextEncoder):
            raise TypeError(f"text must be a TextEncoder, got {type(text).__name__}")
        check_int("embed_dim", embed_dim)
        self.image, self.text = image, text
        if projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
        self.embed_dim, self.projection = embed_dim, projection
        self.image_projection = projection if image_projection is None else image_projection
        self.text_projection = projection if text_projection is None else text_projection
        self.image_proj = projection_head(image.feature_dim, embed_dim, self.image_projection,
                                          "image_projection")
        self.text_proj = projection_head(text.feature_dim, embed_dim, self.text_projection,
                                         "text_projection")

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` images -> ``(B, embed_dim)`` embeddings."""
        return self.image_proj(self.image(images))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` token ids and mask -> ``(B, embed_dim)`` embeddings."""
        return self.text_proj(self.text(input_ids, attention_mask))

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image embeddings, text embeddings), ``(B, embed_dim)`` each, row k from pair k."""
        if isinstance(images, torch.Tensor) and isinstance(input_ids, torch.Tensor) and \
                images.dim() >= 1 and input_ids.dim() >= 1 and images.shape[0] != input_ids.shape[0]:
            raise ValueError(f"images has {images.shape[0]} rows but input_ids {input_ids.shape[0]}")
        return self.encode_image(images), self.encode_text(input_ids, attention_mask)

    # -- configuration -------------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: Mapping) -> "DualEncoder":
        """Build from ``{"image": {ImageEncoder kwargs}, "text": {TextEncoder kwargs},
        "embed_dim": int, "projection": "linear" | "mlp" | "none", "image_projection": ...,
        "text_projection": ...}`` (all but ``image``/``text`` optional; the per-modality
        projections default to ``projection``). Unknown keys raise a ValueError naming them."""
        if not isinstance(cfg, Mapping):
            raise TypeError(f"the model config must be a dict, got {type(cfg).__name__}")
        _check_keys("model config", cfg, CONFIG_KEYS)
        image_cfg, text_cfg = cfg.get("image", {}), cfg.get("text", {})
        for name, sub in (("image", image_cfg), ("text", text_cfg)):
            if not isinstance(sub, Mapping):
                raise TypeError(f"model config {name!r} must be a dict, got {type(sub).__name__}")
        _check_keys("model config 'text'", text_cfg, TEXT_KEYS)
        image_cfg = copy.deepcopy(dict(image_cfg))
        image = ImageEncoder(image_cfg.pop("name", "vit_base_patch16_224"), **image_cfg)
        text = TextEncoder(**copy.deepcopy(dict(text_cfg)))
        return cls(image, text, embed_dim=cfg.get("embed_dim", 512),
                   projection=cfg.get("projection", "linear"),
                   image_projection=cfg.get("image_projection"), text_projection=cfg.get("text_projection"))

    def to_config(self) -> dict:
        """The config :meth:`from_config` rebuilds this architecture from, without weight files
        (load the ``state_dict`` of a checkpoint into the rebuilt model)."""
        return {"image": self.image.config(), "text": self.text.config(),
                "embed_dim": self.embed_dim, "projection": self.projection,
                "image_projection": self.image_projection, "text_projection": self.text_projection}


def _check_keys(where: str, cfg: Mapping, allowed: tuple) -> None:
    unknown = sorted(str(k) for k in cfg if k not in allowed)
    if unknown:
        raise ValueError(f"unknown keys in the {where}: {unknown} (allowed: {list(allowed)})")
