"""Collator: a list of dataset items -> one training batch (images, token ids, entities)."""

from __future__ import annotations

from typing import Sequence

import torch

from ..entities.meta_entities import MetaEntities
from ..utils.checks import check_int


class Collator:
    """Batch items of the shared item format.

    Returns ``{"images": float32 (B, C, H, W), "input_ids": int64 (B, L), "attention_mask":
    int64 (B, L), "entities": MetaEntities (CPU), "index": int64 (B,), "study_ids": list[str]}``.

    Args:
        tokenizer: a Hugging Face tokenizer (e.g. from
            :func:`medtrim_ext.models.tokenization.train_wordpiece_tokenizer`); called with
            ``truncation=True, max_length=max_length``.
        max_length: longest token sequence (reports are truncated to it).
        vocabulary: the Vocabulary of the entities (default: the packaged one).
        padding: ``"longest"`` (pad to the longest text of the batch, default) or
            ``"max_length"`` (always ``max_length``: fixed shapes).
    """

    def __init__(self, tokenizer, max_length: int = 128, vocabulary=None, padding: str = "longest"):
        if not callable(tokenizer):
            raise TypeError(f"tokenizer must be a callable Hugging Face tokenizer, got {type(tokenizer).__name__}")
        check_int("max_length", max_length, minimum=2)
        if padding not in ("longest", "max_length"):
            raise ValueError(f"padding must be 'longest' or 'max_length', got {padding!r}")
        self.tokenizer, self.max_length, self.vocabulary, self.padding = tokenizer, max_length, vocabulary, padding

    def __call__(self, items: Sequence[dict]) -> dict:
        if not isinstance(items, (list, tuple)) or not items:
            raise ValueError("Collator needs a non-empty list of dataset items")
        for k, it in enumerate(items):
            missing = [key for key in ("image", "text", "entities", "index", "study_id")
                       if not isinstance(it, dict) or key not in it]
            if missing:
                raise ValueError(f"item {k} lacks {missing}: not a dataset item")
        shapes = {tuple(it["image"].shape) for it in items}
        if len(shapes) != 1:
            raise ValueError(f"items have images of different shapes {sorted(shapes)}: use one ImageTransform")
        images = torch.stack([it["image"] for it in items]).float()
        enc = self.tokenizer([it["text"] for it in items], padding=self.padding, truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        return {
            "images": images,
            "input_ids": enc["input_ids"].long(),
            "attention_mask": enc["attention_mask"].long(),
            "entities": MetaEntities.from_records([it["entities"] for it in items], vocabulary=self.vocabulary),
            "index": torch.tensor([int(it["index"]) for it in items], dtype=torch.int64),
            "study_ids": [str(it["study_id"]) for it in items],
        }
