"""TextEncoder: any transformers encoder (BERT-like) as a pooled-feature report encoder."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from .freezing import freeze_encoder, hf_layer_groups, keep_frozen_in_eval
from ..utils.checks import check_int, check_tensor, read_json

# BERT-base, shaped like BioClinicalBERT (cased BERT vocabulary of 28996 word pieces)
DEFAULT_TEXT_CONFIG = {
    "model_type": "bert", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "vocab_size": 28996, "max_position_embeddings": 512,
}
POOLINGS = ("cls", "mean", "pooler")


class TextEncoder(nn.Module):
    """A transformers encoder, pooled to one vector per report: ``(B, L) -> (B, feature_dim)``.

    >>> enc = TextEncoder(config={"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2,
    ...                           "num_attention_heads": 2, "intermediate_size": 64}, vocab_size=500)
    >>> enc(input_ids, attention_mask).shape        # (B, 32)

    - ``pretrained``: a LOCAL model directory (``save_pretrained`` output, e.g. a copy of
      BioClinicalBERT), loaded with ``local_files_only=True``; nothing is downloaded.
    - otherwise ``config``: a dict of config arguments including ``model_type`` (default
      :data:`DEFAULT_TEXT_CONFIG`, BERT-base shaped like BioClinicalBERT) or the path of a
      ``config.json`` (or of a directory holding one); the weights are randomly initialised
      (seeded by torch's global generator).
    - ``vocab_size``: the size of the tokenizer's vocabulary (a tokenizer trained on the corpus);
      overrides the config's, and resizes the embeddings of a pretrained model that differs.
    - ``pooling``: ``"cls"`` (the first token's final state; tokenizers must pad on the right),
      ``"mean"`` (mean over the tokens where ``attention_mask`` is 1) or ``"pooler"`` (the
      model's own pooler output; BERT: ``tanh(W h_[CLS] + b)`` with the pretrained ``W``, ``b`` --
      what the published MedTrim code embeds reports with). A model without a pooler layer
      cannot use ``"pooler"`` (ValueError).
    - ``freeze_layers=n`` freezes the embeddings and the first ``n`` layers (see ``freezing``);
      with ``freeze_stem=False`` only the ``n`` layers, the embeddings stay trainable (as the
      published code). The pooler is never frozen.

    With ``"cls"`` or ``"mean"`` pooling, a pooler layer the model may have (BERT's) is removed:
    it is unused, and parameters without gradients break DistributedDataParallel.
    """

    def __init__(self, pretrained: str | Path | None = None, *, config: Mapping | str | Path | None = None,
                 freeze_layers: int = 0, freeze_stem: bool = True, pooling: str = "cls",
                 vocab_size: int | None = None):
        super().__init__()
        from transformers import AutoModel

        if pretrained is not None and config is not None:
            raise ValueError("pass either pretrained (a model directory) or config, not both")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if not isinstance(freeze_stem, bool):
            raise TypeError(f"freeze_stem must be a bool, got {freeze_stem!r}")
        if vocab_size is not None:
            check_int("vocab_size", vocab_size)
        missing: set = set()
        if pretrained is not None:
            self.model, missing = _load_pretrained(pretrained)
            if vocab_size is not None and vocab_size != self.model.get_input_embeddings().num_embeddings:
                self.model.resize_token_embeddings(vocab_size)
        else:
            self.model = AutoModel.from_config(_build_config(config, vocab_size))
        if pooling == "pooler":
            if getattr(self.model, "pooler", None) is None:
                raise ValueError(f"pooling='pooler' needs a model with a pooler layer (BERT's); the "
                                 f"text model ({self.model.config.model_type}) has none: use "
                                 "pooling='cls' or 'mean'")
            absent = sorted(k for k in missing if k.split(".")[0] == "pooler")
            if absent:
                warnings.warn(f"pooling='pooler': the model in {str(pretrained)!r} has no pooler "
                              f"weights ({', '.join(absent)}); the pooler starts from random weights",
                              stacklevel=2)
        elif getattr(self.model, "pooler", None) is not None:
            self.model.pooler = None
        self.pooling = pooling
        self.feature_dim = int(self.model.config.hidden_size)
        self.vocab_size = int(self.model.get_input_embeddings().num_embeddings)
        self.freeze_layers, self.freeze_stem = freeze_layers, freeze_stem
        self._frozen = freeze_encoder(self, hf_layer_groups, freeze_layers,
                                      f"the text model ({self.model.config.model_type})", freeze_stem=freeze_stem)

    @property
    def num_layers(self) -> int:
        """How many layers ``freeze_layers`` counts."""
        return len(hf_layer_groups(self.model)[1])

    def config(self) -> dict:
        """Constructor arguments that rebuild this architecture from its config alone (the weights
        come from a checkpoint of the whole model). JSON/YAML serialisable."""
        cfg = self.model.config.to_diff_dict()
        cfg["model_type"] = self.model.config.model_type
        cfg["vocab_size"] = self.vocab_size
        cfg = json.loads(json.dumps(cfg))  # plain types (e.g. str keys of id2label)
        return {"config": cfg, "freeze_layers": self.freeze_layers, "freeze_stem": self.freeze_stem,
                "pooling": self.pooling}

    def train(self, mode: bool = True) -> "TextEncoder":
        super().train(mode)
        keep_frozen_in_eval(self, self._frozen)
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(B, feature_dim)`` of token ids ``(B, L)`` and their mask ``(B, L)``
        (1 = token, 0 = padding). Every row needs at least one token."""
        _check_tokens(input_ids, attention_mask, self.vocab_size)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        if self.pooling == "pooler":
            return out.pooler_output
        hidden = out.last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        # float32 sums (token counts above 256 are not exact in bf16), back in the hidden dtype
        mask = attention_mask.to(torch.float32).unsqueeze(-1)
        return ((hidden * mask).sum(1) / mask.sum(1)).to(hidden.dtype)


def _load_pretrained(path):
    """(model, names of the parameters the folder did not hold) of a local model folder."""
    from transformers import AutoModel

    p = Path(path)
    if not p.is_dir():
        raise ValueError(f"pretrained must be a local model directory; {str(path)!r} is not a directory")
    if not (p / "config.json").is_file():
        raise ValueError(f"pretrained model directory {str(path)!r} has no config.json")
    try:
        model, info = AutoModel.from_pretrained(str(p), local_files_only=True, output_loading_info=True)
        return model, set(info.get("missing_keys") or ())
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ValueError(f"cannot load a transformers model from {str(path)!r}: {exc}") from None


def _build_config(config, vocab_size):
    from transformers import AutoConfig

    if config is None:
        args = dict(DEFAULT_TEXT_CONFIG)
    elif isinstance(config, (str, Path)):
        p = Path(config)
        if p.is_dir():
            p = p / "config.json"
        args = read_json(p, "text config file")
        if not isinstance(args, dict):
            raise ValueError(f"text config file {str(p)!r} must hold a JSON object")
    elif isinstance(config, Mapping):
        args = dict(config)
    else:
        raise TypeError(f"config must be a dict or the path of a config.json, got {type(config).__name__}")
    model_type = args.pop("model_type", None)
    if not isinstance(model_type, str):
        raise ValueError(f"the text config needs a 'model_type' (e.g. 'bert'), got {model_type!r}")
    if vocab_size is not None:
        args["vocab_size"] = vocab_size
    try:
        return AutoConfig.for_model(model_type, **args)
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"invalid text config (model_type {model_type!r}): {exc}") from None


def _check_tokens(input_ids, attention_mask, vocab_size: int) -> None:
    for name, t in (("input_ids", input_ids), ("attention_mask", attention_mask)):
        check_tensor(name, t)
        if t.dtype.is_floating_point or t.dtype.is_complex:
            raise TypeError(f"{name} must be an integer or bool tensor, got {t.dtype}")
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be 2-D (batch, tokens) with at least one token, got shape "
                         f"{tuple(input_ids.shape)}")
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids "
                         f"{tuple(input_ids.shape)}")
    if attention_mask.device != input_ids.device:
        raise ValueError(f"attention_mask is on {attention_mask.device} but input_ids on {input_ids.device}")
    if input_ids.shape[0] == 0:
        return
    # one host synchronisation for all value checks
    bad_ids, bad_mask, empty = torch.stack([
        ((input_ids < 0) | (input_ids >= vocab_size)).any(),
        ((attention_mask != 0) & (attention_mask != 1)).any(),
        (attention_mask.sum(1) == 0).any(),
    ]).tolist()
    if bad_ids:
        raise ValueError(f"input_ids has ids outside [0, {vocab_size}) (the model's vocabulary); "
                         "does the tokenizer match the text encoder's vocab_size?")
    if bad_mask:
        raise ValueError("attention_mask must hold only 0 and 1")
    if empty:
        raise ValueError("attention_mask has a row without any token (an empty text)")
