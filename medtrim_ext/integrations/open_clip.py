"""open_clip models as the training loop's dual encoder (``model.kind=open_clip``).

    medtrim train --config demo model.kind=open_clip model.name=medtrim-tiny-clip data.image_size=32

``model.name`` names the architecture, one of:

- an open_clip model name (``ViT-B-16``, ...) or one of the configs packaged here
  (``medtrim_ext/data/open_clip/``: ``medtrim-tiny-clip``, a 1-layer ViT and text transformer
  for tests and CPU examples);
- a model-config JSON file: open_clip's format (``embed_dim``, ``vision_cfg``, ``text_cfg``) or a
  downloaded model's ``open_clip_config.json`` (``{"model_cfg": ..., "preprocess_cfg": ...}``);
- ``local-dir:<folder>``: a folder with ``open_clip_config.json`` and its weights (what
  open_clip's ``local-dir:`` schema reads; a finished run's ``<out_dir>/open_clip`` is one).

``model.checkpoint`` is a local weights file, loaded with open_clip's own ``load_checkpoint``
(``torch.load(weights_only=True)`` or safetensors). Nothing is downloaded: open_clip's
``pretrained`` tags are not used, and a Hugging Face text tower (BiomedCLIP's PubMedBERT) needs
``model.tokenizer``, a local folder with its tokenizer files and ``config.json``.

The wrapper, :class:`OpenCLIPDualEncoder`, keeps the open_clip model whole (``.model``). It takes
the training loop's images, normalised by ``data.normalize`` with ``data.in_chans`` channels, and
hands open_clip what its preprocessing would: RGB normalised with the model's mean and std (a gray
channel is repeated). Its tokenizer (:class:`OpenCLIPTokenizer`) is open_clip's, called as the
loop's collator calls a Hugging Face tokenizer. ``encode_image`` / ``encode_text`` return
unnormalised embeddings, as :class:`~medtrim_ext.models.DualEncoder` does: the objectives
normalise. The model's own ``logit_scale`` (and SigLIP's ``logit_bias``) is frozen: this
library's InfoNCE objectives hold their temperature themselves.

A finished run writes ``<out_dir>/open_clip/`` (:func:`export_open_clip`):
``open_clip_config.json`` + ``open_clip_pytorch_model.bin`` (the open_clip model's
``state_dict``), so ``open_clip.create_model("local-dir:<out_dir>/open_clip")`` and
``open_clip.get_tokenizer("local-dir:<out_dir>/open_clip")`` load the trained model back, and
``open_clip.create_model(name, pretrained=".../open_clip_pytorch_model.bin")`` too when ``name`` is
registered with open_clip.

Needs the ``open-clip`` extra: ``pip install "medtrim_ext[open-clip]"``.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from ..utils.extras import require_extra

require_extra("open-clip", "medtrim_ext.integrations.open_clip")   # names the extra

import open_clip  # noqa: E402
from open_clip.tokenizer import HFTokenizer, SimpleTokenizer  # noqa: E402

from ..utils.checks import check_tensor, read_json  # noqa: E402

KIND = "open_clip"
TINY = "medtrim-tiny-clip"                 # packaged: medtrim_ext/data/open_clip/medtrim-tiny-clip.json
EXPORT_CONFIG = "open_clip_config.json"    # the names open_clip's local-dir: schema reads
EXPORT_WEIGHTS = "open_clip_pytorch_model.bin"
LOCAL_DIR = "local-dir:"
WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth")
# the loop's image normalisations (medtrim_ext.datasets.transforms): x = (x01 - shift) / scale
INPUT_NORMALIZE = {"half": ((0.5,) * 3, (0.5,) * 3),
                   "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}
CONFIG_KEYS = ("kind", "name", "model_cfg", "preprocess_cfg", "input_normalize", "tokenizer")


def packaged_config_dir() -> Path:
    return Path(str(resources.files("medtrim_ext") / "data" / "open_clip"))


def register_packaged_configs() -> None:
    """Make the packaged configs (``medtrim-tiny-clip``) known to open_clip by name, once."""
    if TINY not in open_clip.list_models():
        open_clip.add_model_config(packaged_config_dir())


def _default_preprocess(model_cfg: dict) -> dict:
    cfg = {"size": 224, "mode": "RGB", "mean": list(open_clip.OPENAI_DATASET_MEAN),
           "std": list(open_clip.OPENAI_DATASET_STD), "interpolation": "bicubic",
           "resize_mode": "shortest", "fill_color": 0}
    cfg["size"] = model_cfg.get("vision_cfg", {}).get("image_size", cfg["size"])
    return cfg


def _read_json(path: Path, what: str) -> dict:
    data = read_json(path, f"model.name's {what}")
    if not isinstance(data, dict):
        raise ValueError(f"model.name: the {what} {str(path)!r} is not a JSON object")
    return data


def resolve_name(name: str) -> tuple[dict, dict, str | None]:
    """``(model_cfg, preprocess_cfg, weights file or None)`` of ``model.name`` (see the module
    docstring); ``ValueError`` naming ``model.name`` when it is none of them."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"model.name must name an open_clip model, config file or local-dir: folder, got {name!r}")
    weights = None
    if name.startswith(LOCAL_DIR):
        folder = Path(name[len(LOCAL_DIR):])
        if not (folder / EXPORT_CONFIG).is_file():
            raise ValueError(f"model.name={name!r}: no {EXPORT_CONFIG} in {str(folder)!r}")
        data = _read_json(folder / EXPORT_CONFIG, "open_clip config")
        weights = next((str(folder / w) for w in WEIGHT_NAMES if (folder / w).is_file()), None)
    elif name.endswith(".json"):
        if not Path(name).is_file():
            raise ValueError(f"model.name={name!r}: no such model-config file")
        data = _read_json(Path(name), "model config")
    else:
        register_packaged_configs()
        data = open_clip.get_model_config(name)
        if data is None:
            raise ValueError(f"model.name={name!r} is not an open_clip model (known: "
                             f"{', '.join(open_clip.list_models()[:8])}, ...; or a model-config "
                             f".json file, or local-dir:<folder>)")
    model_cfg = copy.deepcopy(data.get("model_cfg", data))
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in model_cfg]
    if missing:
        raise ValueError(f"model.name={name!r}: the open_clip model config lacks {missing}")
    preprocess = {**_default_preprocess(model_cfg), **copy.deepcopy(data.get("preprocess_cfg", {}))}
    return model_cfg, preprocess, weights


def _local_text_tower(model_cfg: dict, name: str, tokenizer: str | None) -> str | None:
    """Point a Hugging Face text tower at local files (never the Hub): ``model.tokenizer`` is a
    local folder with its tokenizer files and ``config.json``. Returns the tokenizer folder."""
    text_cfg = model_cfg["text_cfg"]
    if tokenizer is not None and not Path(tokenizer).is_dir():
        raise ValueError(f"model.tokenizer={tokenizer!r} is not a folder")
    hf_model = text_cfg.get("hf_model_name")
    if hf_model and not Path(hf_model).is_dir():
        if tokenizer is None or not (Path(tokenizer) / "config.json").is_file():
            raise ValueError(
                f"model.name={name!r} has the Hugging Face text tower {hf_model!r}, which would be "
                f"downloaded: set model.tokenizer to a local folder with its config.json and "
                f"tokenizer files (the weights come from model.checkpoint)")
        text_cfg["hf_model_name"] = str(tokenizer)
    hf_tok = text_cfg.get("hf_tokenizer_name")
    if tokenizer is not None:
        return str(tokenizer)
    if hf_tok and not Path(hf_tok).is_dir():
        raise ValueError(f"model.name={name!r} uses the Hugging Face tokenizer {hf_tok!r}, which "
                         f"would be downloaded: set model.tokenizer to a local copy of it")
    return hf_tok or None


def model_config(name: str, *, tokenizer: str | None = None, input_normalize: str = "half") -> dict:
    """The plain dict :meth:`OpenCLIPDualEncoder.from_config` builds from (stored in checkpoints,
    so a run rebuilds without the config file or registry it named)."""
    if input_normalize not in INPUT_NORMALIZE:
        raise ValueError(f"input_normalize must be one of {tuple(INPUT_NORMALIZE)}, got {input_normalize!r}")
    model_cfg, preprocess, _ = resolve_name(name)
    tok = _local_text_tower(model_cfg, name, tokenizer)
    return {"kind": KIND, "name": name, "model_cfg": model_cfg, "preprocess_cfg": preprocess,
            "input_normalize": input_normalize, "tokenizer": tok}


def _create(model_cfg: dict, preprocess_cfg: dict) -> nn.Module:
    """open_clip's ``create_model`` on a config dict, with no weights and no download: the dict
    goes through open_clip's ``local-dir:`` schema from a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="medtrim-open-clip-") as tmp:
        Path(tmp, EXPORT_CONFIG).write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}))
        import logging

        quiet = logging.getLogger()
        level = quiet.level
        quiet.setLevel(max(level, logging.ERROR))  # "no CLIP weights found": intended here
        try:
            return open_clip.create_model(LOCAL_DIR + tmp, pretrained_image=False, pretrained_text=False)
        finally:
            quiet.setLevel(level)


class OpenCLIPTokenizer:
    """open_clip's tokenizer (``SimpleTokenizer``, or ``HFTokenizer`` for a Hugging Face text
    tower), called as the training loop's collator calls a Hugging Face tokenizer:
    ``tok(texts, padding=..., truncation=True, max_length=L, return_tensors="pt")`` ->
    ``{"input_ids", "attention_mask"}``, int64 ``(B, context_length)``.

    Reports are cut to ``min(max_length, context_length)`` tokens (open_clip keeps the end token)
    and padded to the model's ``context_length``, the width open_clip's text transformer needs.
    """

    def __init__(self, tokenizer, context_length: int, pad_id: int):
        self.tokenizer, self.context_length, self.pad_id = tokenizer, int(context_length), int(pad_id)

    @classmethod
    def from_config(cls, config: dict) -> "OpenCLIPTokenizer":
        text_cfg = config["model_cfg"]["text_cfg"]
        ctx = int(text_cfg.get("context_length", 77))
        kwargs = dict(text_cfg.get("tokenizer_kwargs") or {})
        if config.get("tokenizer"):
            tok = HFTokenizer(config["tokenizer"], context_length=ctx,
                              tokenizer_mode=text_cfg.get("tokenizer_mode"), local_files_only=True, **kwargs)
            pad = tok.tokenizer.pad_token_id or 0
        else:
            tok, pad = SimpleTokenizer(context_length=ctx, **kwargs), 0
        return cls(tok, ctx, pad)

    def __len__(self) -> int:
        inner = getattr(self.tokenizer, "tokenizer", None)
        return len(inner) if inner is not None else self.tokenizer.vocab_size

    def __call__(self, texts, padding="max_length", truncation=True, max_length=None,
                 return_tensors="pt") -> dict:
        if return_tensors != "pt":
            raise ValueError(f"return_tensors must be 'pt', got {return_tensors!r}")
        length = self.context_length if max_length is None else min(int(max_length), self.context_length)
        ids = self.tokenizer(list(texts) if not isinstance(texts, str) else [texts], context_length=length)
        if ids.shape[1] < self.context_length:
            ids = torch.nn.functional.pad(ids, (0, self.context_length - ids.shape[1]), value=self.pad_id)
        ids = ids.long()
        return {"input_ids": ids, "attention_mask": (ids != self.pad_id).long()}


class OpenCLIPDualEncoder(nn.Module):
    """An open_clip model as the training loop's dual encoder (the contract of
    :class:`~medtrim_ext.models.DualEncoder`): ``model(images, input_ids, attention_mask)`` ->
    unnormalised ``(B, embed_dim)`` image and text embeddings, row k from pair k.

    ``images`` are ``(B, 1 or 3, H, W)``, normalised by ``input_normalize`` (the loop's
    ``data.normalize``: ``"half"`` or ``"imagenet"``) at the model's image size; they are mapped
    to open_clip's input (RGB, the model's mean and std) inside :meth:`encode_image`.
    ``attention_mask`` is not used: open_clip's text towers mask padding themselves.
    Build with :meth:`from_config` (a dict of :func:`model_config`); ``.model`` is the open_clip
    model, whose ``state_dict`` :func:`export_open_clip` writes.
    """

    def __init__(self, model: nn.Module, config: dict):
        super().__init__()
        self.model = model
        self.config = copy.deepcopy(config)
        self.embed_dim = int(config["model_cfg"]["embed_dim"])
        size = getattr(model.visual, "image_size", config["preprocess_cfg"]["size"])
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
        for name in ("logit_scale", "logit_bias"):   # the objectives own the temperature
            p = getattr(model, name, None)
            if isinstance(p, nn.Parameter):
                p.requires_grad_(False)
        # one affine map per channel: the loop's normalisation undone, open_clip's applied
        shift_in, scale_in = INPUT_NORMALIZE[config["input_normalize"]]
        mean = torch.tensor(config["preprocess_cfg"]["mean"], dtype=torch.float32)
        std = torch.tensor(config["preprocess_cfg"]["std"], dtype=torch.float32)
        scale = torch.tensor(scale_in) / std
        shift = (torch.tensor(shift_in) - mean) / std
        self.register_buffer("input_scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_shift", shift.view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_config(cls, config: dict) -> "OpenCLIPDualEncoder":
        """Build from :func:`model_config`'s dict, with random weights (load a ``state_dict``)."""
        if not isinstance(config, dict) or config.get("kind") != KIND:
            raise ValueError(f"not an open_clip model config (kind must be {KIND!r})")
        unknown = sorted(set(config) - set(CONFIG_KEYS))
        if unknown:
            raise ValueError(f"unknown keys in the open_clip model config: {unknown} (allowed: {list(CONFIG_KEYS)})")
        return cls(_create(config["model_cfg"], config["preprocess_cfg"]), config)

    def to_config(self) -> dict:
        return copy.deepcopy(self.config)

    def load_open_clip_weights(self, path: str | Path) -> None:
        """Load open_clip weights (e.g. ``open_clip_pytorch_model.bin``) with open_clip's
        ``load_checkpoint`` (strict; ``torch.load(weights_only=True)``)."""
        if not Path(path).is_file():
            raise ValueError(f"model.checkpoint {str(path)!r} does not exist")
        open_clip.load_checkpoint(self.model, str(path), strict=True, weights_only=True)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 1 or 3, H, W)`` images (the loop's normalisation) -> ``(B, embed_dim)``."""
        check_tensor("images", images, floating=True, dim=4)
        if images.shape[1] not in (1, 3):
            raise ValueError(f"images must have 1 or 3 channels, got {images.shape[1]}")
        if tuple(images.shape[-2:]) != self.image_size:
            raise ValueError(f"images are {tuple(images.shape[-2:])} but the open_clip model takes "
                             f"{self.image_size}: set data.image_size={self.image_size[0]}")
        x = images.expand(-1, 3, -1, -1) * self.input_scale.to(images.dtype) + self.input_shift.to(images.dtype)
        return self.model.encode_image(x, normalize=False)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, context_length)`` token ids of :class:`OpenCLIPTokenizer` -> ``(B, embed_dim)``."""
        check_tensor("input_ids", input_ids, dim=2)
        return self.model.encode_text(input_ids, normalize=False)

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if images.shape[0] != input_ids.shape[0]:
            raise ValueError(f"images has {images.shape[0]} rows but input_ids {input_ids.shape[0]}")
        return self.encode_image(images), self.encode_text(input_ids, attention_mask)

    def image_transform(self):
        """open_clip's evaluation transform for this model (PIL image -> normalised RGB tensor),
        for images outside the training loop; feed its output to ``self.model.encode_image``."""
        p = self.config["preprocess_cfg"]
        return open_clip.image_transform(p["size"], is_train=False, mean=p["mean"], std=p["std"],
                                         resize_mode=p.get("resize_mode"),
                                         interpolation=p.get("interpolation"),
                                         fill_color=p.get("fill_color", 0))


def build(name: str, *, checkpoint: str | None = None, tokenizer: str | None = None,
          input_normalize: str = "half", image_size: int | None = None):
    """``(OpenCLIPDualEncoder, OpenCLIPTokenizer)`` for ``model.name`` with the weights of
    ``checkpoint`` (or of a ``local-dir:`` folder; none: random). ``image_size`` (the loop's
    ``data.image_size``) must be the model's."""
    config = model_config(name, tokenizer=tokenizer, input_normalize=input_normalize)
    check_image_size(config, image_size)
    model = OpenCLIPDualEncoder.from_config(config)
    weights = checkpoint or resolve_name(name)[2]
    if weights is not None:
        model.load_open_clip_weights(weights)
    return model, OpenCLIPTokenizer.from_config(config)


def check_image_size(config: dict, image_size: int | None) -> None:
    size = config["model_cfg"]["vision_cfg"].get("image_size", config["preprocess_cfg"]["size"])
    size = size[0] if isinstance(size, (tuple, list)) else size
    if image_size is not None and int(image_size) != int(size):
        raise ValueError(f"data.image_size={image_size} but the open_clip model {config['name']!r} "
                         f"takes {size} px images: set data.image_size={size}")


def export_open_clip(model: OpenCLIPDualEncoder, out_dir: str | Path) -> Path:
    """Write ``out_dir/open_clip_config.json`` and ``out_dir/open_clip_pytorch_model.bin`` (the
    open_clip model's ``state_dict``; a Hugging Face tokenizer's files too), the folder that
    ``open_clip.create_model("local-dir:<out_dir>")`` loads. Written to a temporary folder and
    renamed into place, so a reader never sees half of it."""
    from ..utils.io import make_temp_dir

    out = Path(out_dir)
    tmp = make_temp_dir(out)
    try:
        cfg = model.to_config()
        (tmp / EXPORT_CONFIG).write_text(json.dumps(
            {"model_cfg": cfg["model_cfg"], "preprocess_cfg": cfg["preprocess_cfg"]}, indent=1))
        state = {k: v.detach().cpu() for k, v in model.model.state_dict().items()}
        torch.save(state, tmp / EXPORT_WEIGHTS)
        if cfg.get("tokenizer"):   # open_clip's local-dir: reads an HF tokenizer from the folder
            OpenCLIPTokenizer.from_config(cfg).tokenizer.save_pretrained(str(tmp))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


__all__ = ["EXPORT_CONFIG", "EXPORT_WEIGHTS", "KIND", "OpenCLIPDualEncoder", "OpenCLIPTokenizer", "TINY",
           "build", "check_image_size", "export_open_clip", "model_config", "register_packaged_configs",
           "resolve_name"]
