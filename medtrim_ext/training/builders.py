"""Build the parts of a run from its config: datasets, tokenizer, model, device."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from ..utils.checks import check_folder_path, check_int, parse_device
from .config import Config
from .distributed import DistContext, barrier


def resolve_device(name: str, ctx: DistContext) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = parse_device(name, "device")   # evaluate's --device reaches here unchecked
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"train.device={name!r} but no CUDA device is available")
        if ctx.enabled:  # under torchrun each process drives its local rank's GPU
            device = torch.device("cuda", ctx.local_rank)
    return device


def entity_cache_dir(cfg: Config) -> str | None:
    """``data.cache_dir``, else ``<train.out_dir>/entity-cache``, else (no run folder yet) the
    cache shared by runs in default folders, ``runs/entity-cache``."""
    if cfg.data.entities != "extracted":
        return None
    if cfg.data.cache_dir:
        return cfg.data.cache_dir
    if cfg.train.out_dir is None:
        from .rundir import DEFAULT_RUNS_ROOT, SHARED_CACHE

        return str(DEFAULT_RUNS_ROOT / SHARED_CACHE)
    return str(Path(cfg.train.out_dir) / "entity-cache")


def build_dataset(cfg: Config, split: str, *, train: bool, progress: bool = True):
    """The dataset of ``split``; for training, augmented when ``data.augment`` with per-item draws
    seeded by ``train.seed`` (so a resumed run sees the same images). Every split is normalised
    by ``data.normalize`` (evaluation sees the images as training did)."""
    from ..datasets import load_dataset
    from ..datasets.factory import GENERATED_KINDS

    d = cfg.data
    if d.entities == "extracted" and d.cache_dir:   # named by its key, before any extraction
        check_folder_path(d.cache_dir, "data.cache_dir")
    options = dict(d.options)
    if d.kind in GENERATED_KINDS:
        # per-split sizes of generated data: {n_train: 3000, n_test: 1000} -> n for this split
        # checked here, by the key's name: PhantomDataset would name its own argument, "n"
        sizes = {k[2:]: check_int(f"data.options.{k}", options.pop(k))
                 for k in list(options) if k in ("n_train", "n_validate", "n_test")}
        if split in sizes:
            options["n"] = sizes[split]
    augment = train and d.augment
    if augment:
        options.setdefault("aug_seed", cfg.train.seed)
    return load_dataset(d.kind, split, root=d.root, image_size=d.image_size, in_chans=d.in_chans,
                        train=augment, normalize=d.normalize, entities=d.entities, cache_dir=entity_cache_dir(cfg),
                        progress=progress, **options)


def build_tokenizer(cfg: Config, texts, out_dir: Path, ctx: DistContext):
    """The configured local tokenizer, or a WordPiece trained on the training reports (saved in
    ``<out_dir>/tokenizer`` by the main process and loaded from there by the others)."""
    from ..models.tokenization import load_tokenizer, train_wordpiece_tokenizer

    if cfg.model.kind == "open_clip":   # the model's own tokenizer (BPE, or its local HF one)
        from ..integrations.open_clip import OpenCLIPTokenizer

        return OpenCLIPTokenizer.from_config(model_config(cfg, None))
    if cfg.model.tokenizer:
        return load_tokenizer(cfg.model.tokenizer)
    path = out_dir / "tokenizer"
    if not path.exists() and ctx.is_main:
        train_wordpiece_tokenizer(texts, vocab_size=cfg.model.tokenizer_vocab_size, out_dir=path)
    barrier(ctx)
    return load_tokenizer(path)


def model_config(cfg: Config, vocab_size: int | None) -> dict:
    """The :class:`DualEncoder` config (stored in checkpoints: it rebuilds the model); a text model
    built from a config gets the tokenizer's size. With ``model.kind=open_clip``: the open_clip
    model config it names, resolved (:func:`medtrim_ext.integrations.open_clip.model_config`)."""
    if cfg.model.kind == "open_clip":
        from ..integrations.open_clip import model_config as open_clip_config

        return open_clip_config(cfg.model.name, tokenizer=cfg.model.tokenizer, input_normalize=cfg.data.normalize)
    from ..models.text import DEFAULT_TEXT_CONFIG

    text = copy.deepcopy(cfg.model.text)
    if vocab_size is not None and not text.get("pretrained"):
        # no text config given: the encoder's default (BERT-base shaped) with the tokenizer's size;
        # a config of only {vocab_size} has no model_type and failed after the run folder was written
        text["config"] = {**(text.get("config") or DEFAULT_TEXT_CONFIG), "vocab_size": vocab_size}
    m = cfg.model
    return {"image": copy.deepcopy(m.image), "text": text, "embed_dim": m.embed_dim,
            "projection": m.projection, "image_projection": m.image_projection or m.projection,
            "text_projection": m.text_projection or m.projection}


def check_model(cfg: Config) -> None:
    """What can be checked of the model before a run writes anything: with
    ``model.kind=open_clip``, that the extra is installed, the model name resolves without a
    download, its image size is ``data.image_size`` and ``model.checkpoint`` exists; with the dual
    kind, :func:`check_dual_model`."""
    if cfg.model.kind == "open_clip":
        from ..integrations.open_clip import check_image_size

        check_image_size(model_config(cfg, None), cfg.data.image_size)
        if cfg.model.checkpoint is not None and not Path(cfg.model.checkpoint).is_file():
            raise ValueError(f"model.checkpoint {cfg.model.checkpoint!r} does not exist")
    else:
        check_dual_model(cfg)


def check_dual_model(cfg: Config) -> None:
    """The dual encoder's settings that used to fail only once the run folder was written: an
    unknown timm model, a text config whose hidden size does not split into its heads, and a
    ``data.max_length`` beyond the text model's positions. Reads configs only; builds nothing."""
    import timm
    from transformers import AutoConfig

    from ..models.text import DEFAULT_TEXT_CONFIG, _build_config

    name = cfg.model.image.get("name", "vit_base_patch16_224")
    if not isinstance(name, str) or not timm.is_model(name):
        raise ValueError(f"model.image.name: unknown timm model {name!r} (timm.list_models() lists them)")
    text = cfg.model.text
    if text.get("pretrained"):
        folder = Path(text["pretrained"])
        if not (folder / "config.json").is_file():
            raise ValueError(f"model.text.pretrained {str(folder)!r} is not a model folder with a config.json")
        try:
            conf = AutoConfig.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ValueError(f"model.text.pretrained {str(folder)!r}: cannot read its config: {exc}") from None
    else:
        try:
            conf = _build_config(text.get("config") or DEFAULT_TEXT_CONFIG, None)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"model.text.config: {exc}") from None
    hidden, heads = getattr(conf, "hidden_size", None), getattr(conf, "num_attention_heads", None)
    if isinstance(hidden, int) and isinstance(heads, int) and heads > 0 and hidden % heads:
        raise ValueError(f"model.text: hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
    positions = getattr(conf, "max_position_embeddings", None)
    if isinstance(positions, int) and cfg.data.max_length > positions:
        raise ValueError(f"data.max_length={cfg.data.max_length} is more than the text model's "
                         f"{positions} positions (max_position_embeddings)")


def build_model(cfg: Config, vocab_size: int | None):
    """The dual encoder: :class:`~medtrim_ext.models.DualEncoder`, or with ``model.kind=open_clip``
    an :class:`~medtrim_ext.integrations.open_clip.OpenCLIPDualEncoder` with the weights of
    ``model.checkpoint`` (or of its ``local-dir:`` folder)."""
    if cfg.model.kind == "open_clip":
        from ..integrations.open_clip import build

        model, _ = build(cfg.model.name, checkpoint=cfg.model.checkpoint, tokenizer=cfg.model.tokenizer,
                         input_normalize=cfg.data.normalize, image_size=cfg.data.image_size)
        return model
    from ..models import DualEncoder

    return DualEncoder.from_config(model_config(cfg, vocab_size))


def model_from_config(model_cfg: dict):
    """A checkpoint's model rebuilt from its stored model config (random weights: load its
    ``state_dict``), and the tokenizer an open_clip model brings (None for the dual kind, whose
    tokenizer is a saved folder)."""
    if model_cfg.get("kind") == "open_clip":
        from ..integrations.open_clip import OpenCLIPDualEncoder, OpenCLIPTokenizer

        return OpenCLIPDualEncoder.from_config(model_cfg), OpenCLIPTokenizer.from_config(model_cfg)
    from ..models import DualEncoder

    return DualEncoder.from_config(model_cfg), None
