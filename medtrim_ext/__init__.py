"""medtrim_ext: meta-entity triplet mining (MedTrim) with C++/CUDA kernels behind a PyTorch API.

    >>> from medtrim_ext import MetaEntities, TripletMiner
    >>> ents = MetaEntities.from_records([{"pleural effusion": {"adjs": ["small"], "dirs": ["left"]}}, {}])
    >>> triplets = TripletMiner()(ents)
    >>> loss_img, loss_txt = MultimodalTripletLoss(margin=0.3)(img_emb, txt_emb, triplets)
"""

from __future__ import annotations

from ._loader import load_extension as _load_extension

_C = _load_extension()

# the stages in pipeline order (docs/architecture.md): entities -> ops (the kernels) -> mining -> losses
from .entities import MetaEntities, Vocabulary  # noqa: E402
from .ops import reference  # noqa: E402  (importing ops registers the fake kernels)
from .mining import TripletMiner, Triplets  # noqa: E402
from .losses import MedTrimObjective, MultimodalTripletLoss, ObjectiveOutput  # noqa: E402

__version__ = "0.1.0"
__all__ = ["MedTrimObjective", "MetaEntities", "MultimodalTripletLoss", "ObjectiveOutput",
           "TripletMiner", "Triplets", "Vocabulary", "build_info", "reference"]


def build_info() -> dict:
    """Which backends are compiled, the torch they were built for, and what runs now."""
    import torch

    info = dict(_C.build_info())
    info["version"] = __version__
    info["torch_runtime"] = torch.__version__
    info["cuda_available"] = bool("cuda" in info["backends"] and torch.cuda.is_available())
    return info


# -- imported on first use, so that `import medtrim_ext` stays light: entity extraction (YAML and
# report readers; spaCy loads only when an EntityExtractor is built), encoders (timm,
# transformers), datasets, training and evaluation.
_LAZY = {
    "EntityExtractor": "extraction", "ExtractionOntology": "extraction", "read_reports": "extraction",
    "DualEncoder": "models", "ImageEncoder": "models", "TextEncoder": "models",
    "InfoNCELoss": "losses", "MemoryBank": "losses", "CompositeObjective": "losses",
    "InfoNCEObjective": "losses", "SoftInfoNCEObjective": "losses",
    "OfflineTripletSampler": "mining.offline", "OfflineBatch": "mining.offline",
    "mine_offline_triplets": "mining.offline",
    "load_dataset": "datasets", "generate_phantoms": "datasets", "Collator": "datasets",
    "train_wordpiece_tokenizer": "models.tokenization", "load_tokenizer": "models.tokenization",
    "load_config": "training", "train": "training",
}
__all__ += sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'medtrim_ext' has no attribute {name!r}")
