"""Datasets of chest X-ray images and reports, with one item format, and the built-in phantoms.

    >>> from medtrim_ext.datasets import load_dataset, Collator
    >>> from medtrim_ext.models.tokenization import train_wordpiece_tokenizer
    >>> ds = load_dataset("phantoms", "train", image_size=64, n=256, entities="ground_truth")
    >>> tok = train_wordpiece_tokenizer(ds.texts, vocab_size=1000)
    >>> loader = torch.utils.data.DataLoader(ds, batch_size=32, shuffle=True, collate_fn=Collator(tok))
    >>> batch = next(iter(loader))   # images, input_ids, attention_mask, entities, index, study_ids

``dataset[i]`` is ``{"image": float32 (C, H, W), "text": str, "entities": record, "index": i,
"study_id": str}``; every dataset has ``texts``, ``reports``, ``study_ids``, ``records``,
``attributes`` (ground truth or None), ``labels`` (float (N, C) with NaN, or None) and
``label_names``.
"""

from ..utils.extras import require_extra

# a clear ImportError naming the extra, before any import of it fails bare
require_extra("train", "medtrim_ext.datasets")

from .base import SPLITS, ReportImageDataset, image_text, load_image
from .collate import Collator
from .entity_cache import EntityCache
from .factory import KINDS, load_dataset
from .manifest import ManifestDataset
from .mimic import MimicCxrDataset
from .openi import OpenIDataset
from .iu_phantoms import IUPhantomDataset
from .phantoms import (ATTRIBUTE_SPACE, DISEASES, PhantomDataset, PhantomSet, attributes_to_record,
                       compose_report, generate_phantoms, save_montage, write_phantom_dataset)
from .transforms import ImageTransform

__all__ = ["ATTRIBUTE_SPACE", "Collator", "DISEASES", "EntityCache", "IUPhantomDataset", "ImageTransform", "KINDS",
           "ManifestDataset", "MimicCxrDataset", "OpenIDataset", "PhantomDataset", "PhantomSet",
           "ReportImageDataset", "SPLITS", "attributes_to_record", "compose_report",
           "generate_phantoms", "image_text", "load_dataset", "load_image", "save_montage",
           "write_phantom_dataset"]
