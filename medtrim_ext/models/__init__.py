"""Encoders for MedTrim: a timm image encoder, a transformers text encoder, and the dual encoder
that projects both into one embedding space. Nothing is downloaded: models are built from configs
and may load local weight files.

    >>> from medtrim_ext.models import DualEncoder, ImageEncoder, TextEncoder
"""

from __future__ import annotations

from ..utils.extras import require_extra

# a clear ImportError naming the extra, before any import of it fails bare
require_extra("train", "medtrim_ext.models (the encoders)")

from .dual import DualEncoder, projection_head
from .freezing import trainable_parameters
from .image import ImageEncoder
from .text import DEFAULT_TEXT_CONFIG, TextEncoder

__all__ = ["DEFAULT_TEXT_CONFIG", "DualEncoder", "ImageEncoder", "TextEncoder", "projection_head",
           "trainable_parameters"]
