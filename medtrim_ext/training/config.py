"""Training configuration: nested dataclasses read from YAML, with ``section.key=value`` overrides.

    cfg = load_config("mimic", ["train.steps=2000", "objective.kind=infonce"])

Every key is checked: an unknown section or key raises ``ValueError`` naming it, and a value of
the wrong type or out of range names the key and what it expected (:meth:`Config.validate`, run
by ``load_config`` before any work). YAML is read with exponent floats (``1e-4``) as numbers.
``load_config`` takes a YAML path or the name of a packaged preset
(``medtrim_ext/data/configs/<name>.yaml``): ``demo`` (the CPU phantom demo), ``paper`` (the
published MedTrim training code), ``mimic``, ``iu``, ``manifest`` and ``phantoms-gpu``. A path
``configs/<preset>.yaml`` that does not exist loads the preset (those files lived in the
repository's ``configs/`` folder before they were packaged).

``data.options`` holds the keyword arguments of the dataset kind (``n_train``/``n_validate``/
``n_test``, ``seed`` for phantoms; ``split_fractions``, ``label_columns``, ... for manifests; see
:func:`medtrim_ext.datasets.load_dataset`). An override that changes ``data.kind`` drops the
options of the file's kind, keeping only ``data.options`` given in the same overrides.
"""

from __future__ import annotations

import functools
import typing
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from ..losses.defaults import MARGIN_RANGE, OBJECTIVE_DEFAULTS
from ..mining.miner import MINER_DEFAULTS, TIE_BREAKS
from ..mining.offline import OFFLINE_POOL_SIZE

# parts of objective.kind, joined by "+" for a weighted sum (e.g. "medtrim+infonce")
OBJECTIVE_PARTS = ("medtrim", "medtrim_offline", "infonce", "soft_infonce")
AMP_MODES = ("none", "bf16", "fp16")
SCHEDULES = ("cosine", "linear", "constant")
PROJECTIONS = ("linear", "mlp", "none")   # medtrim_ext.models.dual.PROJECTIONS (not imported: light)
MODEL_KINDS = ("dual", "open_clip")       # open_clip: medtrim_ext.integrations.open_clip
NORMALIZATIONS = ("half", "imagenet")     # medtrim_ext.datasets.transforms.NORMALIZATIONS
DATA_KINDS = ("phantoms", "manifest", "mimic", "iu", "iu_phantoms")   # medtrim_ext.datasets.factory.KINDS
DEVICE_PATTERN = r"auto|cpu|mps|cuda(:\d+)?"
MAX_MEMORY_BANK = 1_000_000              # objective.memory_bank: rows kept on the device
MAX_LOGIT_SCALE = OBJECTIVE_DEFAULTS.max_logit_scale   # InfoNCELoss's: 1 / logit_temperature may not exceed it
# keys renamed since they were written: (section, old) -> new. A config file or override with the
# old name is refused with the new one; a stored run config (a checkpoint's, config.json) of an
# older version is read with the new names (upgrade_config_dict)
RENAMED_KEYS = {("objective", "temperature"): "logit_temperature",
                ("objective", "soft_temperature"): "target_temperature"}


@dataclass
class DataConfig:
    """Which dataset to train and evaluate on (see :func:`medtrim_ext.datasets.load_dataset`)."""

    kind: str = "phantoms"            # phantoms | manifest | mimic | iu | iu_phantoms
    root: str | None = None           # dataset path (unused for phantoms)
    image_size: int = 224
    in_chans: int = 1                 # channels the dataset yields (1: grayscale X-rays)
    normalize: str = "half"           # half: [0, 1] -> [-1, 1]; imagenet: RGB with ImageNet mean/std (in_chans 3)
    entities: str = "extracted"       # extracted (spaCy/medspacy, cached) | ground_truth (phantoms)
    cache_dir: str | None = None      # entity cache folder (default: <out_dir>/entity-cache; runs
    # in default folders (no train.out_dir) share runs/entity-cache)
    train_split: str = "train"
    eval_split: str = "test"
    max_length: int = 128             # report tokens
    augment: bool = True              # random affine + exposure jitter on training images (no flips)
    num_workers: int = 0
    # keyword arguments of the kind's dataset, e.g. {n_train: 4000, seed: 0} for phantoms,
    # {split_fractions: [0.8, 0.1, 0.1]} for manifests; dropped when an override changes data.kind
    options: dict = field(default_factory=dict)


@dataclass
class ModelConfig:
    """The two encoders and the shared embedding (see :class:`medtrim_ext.models.DualEncoder`),
    or an open_clip model (``kind: open_clip``; :mod:`medtrim_ext.integrations.open_clip`)."""

    kind: str = "dual"                # dual: timm image + transformers text encoders | open_clip
    name: str | None = None           # open_clip: model name, model-config .json or local-dir:<folder>
    checkpoint: str | None = None     # open_clip: local weights file (nothing is downloaded)
    image: dict = field(default_factory=lambda: {"name": "vit_base_patch16_224", "in_chans": 3,
                                                 "img_size": 224})
    text: dict = field(default_factory=dict)   # TextEncoder kwargs: pretrained dir or config
    embed_dim: int = 512
    projection: str = "linear"        # linear | mlp | none (identity: the features are the embedding)
    image_projection: str | None = None   # None: projection
    text_projection: str | None = None    # None: projection
    tokenizer: str | None = None      # local tokenizer dir; None: train a WordPiece on the corpus
    tokenizer_vocab_size: int = 8000
    # False: the encoders stay in eval mode while training (no dropout; BatchNorm would use and
    # keep its running statistics), as in the published code, which never calls .train()
    dropout: bool = True


@dataclass
class ObjectiveConfig:
    """What a step minimises: one of ``OBJECTIVE_PARTS`` or a weighted sum joined by ``+``.

    medtrim: online in-batch mining + the MedTrim triplet loss; medtrim_offline: the published
    offline triplets (pools of ``pool_size``); infonce: CLIP's loss; soft_infonce: InfoNCE with
    targets from the meta-entity score (``soft_own_weight``, ``target_temperature``).

    The defaults of the loss and objective keys are those of the modules
    (:data:`medtrim_ext.losses.defaults.OBJECTIVE_DEFAULTS`), the miner's :data:`MINER_DEFAULTS`.
    """

    kind: str = "medtrim"
    weights: dict = field(default_factory=dict)  # part -> weight of a sum (default 1 each)
    margin: float = OBJECTIVE_DEFAULTS.margin
    # the miner (defaults: the published settings, mining.MINER_DEFAULTS)
    w_dis: float = MINER_DEFAULTS.w_dis
    w_adj: float = MINER_DEFAULTS.w_adj
    w_dir: float = MINER_DEFAULTS.w_dir
    threshold: float = MINER_DEFAULTS.threshold
    upper: float = MINER_DEFAULTS.upper
    semi_hard_prob: float = MINER_DEFAULTS.semi_hard_prob
    tie_break: str = MINER_DEFAULTS.tie_break  # random (per anchor, as the published pools do) | first
    # no triplet for an anchor whose best candidate scores less
    min_positive_score: float = MINER_DEFAULTS.min_positive_score
    memory_bank: int = 0              # extra mining candidates from recent batches (0: off)
    pool_size: int = OFFLINE_POOL_SIZE  # medtrim_offline: samples per mining pool (published: 32)
    # medtrim_offline: 0 = mine fresh pools for every step; N > 0 = mine N triplets once before
    # training (<out_dir>/offline_triplets.csv, reused), every epoch iterates them in a new order
    offline_triplets: int = 0
    # with offline_triplets: 0 = pools drawn from the whole training set; S > 0 = draw a random set
    # of S samples, then pool_size pools of pool_size samples from it (published: 512)
    offline_set_size: int = 0
    # infonce, soft_infonce: initial temperature of the logits (learnable; scale 1 / it)
    logit_temperature: float = OBJECTIVE_DEFAULTS.logit_temperature
    soft_own_weight: float = OBJECTIVE_DEFAULTS.own_weight  # soft_infonce: target mass on the own pair
    # soft_infonce: temperature of the softmax over meta-entity scores that spreads the targets
    target_temperature: float = OBJECTIVE_DEFAULTS.target_temperature
    soft_weights: list = field(default_factory=list)  # soft_infonce: [w_dis, w_adj, w_dir] of its
    # target score ([]: the miner's w_dis, w_adj, w_dir)


@dataclass
class OptimConfig:
    lr: float = 1e-4
    text_lr: float | None = None      # None: same as lr
    weight_decay: float = 0.05
    decay_all: bool = False           # True: decay every parameter (no exclusion of biases, norms, ...)
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 100
    schedule: str = "cosine"
    min_lr_ratio: float = 0.01
    clip_grad: float = 1.0            # max global grad norm (0: off)


@dataclass
class RunConfig:
    steps: int = 1000
    batch_size: int = 64              # per process; the global batch is batch_size x world size
    amp: str = "none"                 # none | bf16 | fp16
    seed: int = 0
    device: str = "auto"              # auto | cpu | cuda | cuda:N (torchrun: the local rank's GPU)
    out_dir: str | None = None        # None: a new runs/<objective.kind>-<YYYYmmdd-HHMMSS> per run
    log_every: int = 10
    ckpt_every: int = 200
    # auto: continue <out_dir>/last.pt if present and the config is the same (apart from steps,
    # logging, device, eval, ...; else an error listing the keys) | force: continue it with a
    # changed config | never: a new run only | a checkpoint path (medtrim_ext.training.rundir)
    resume: str = "auto"
    progress: bool = True
    tensorboard: bool = True
    sync_timing: bool = True          # synchronise the device at phase ends: exact step breakdown


@dataclass
class EvalConfig:
    ks: list = field(default_factory=lambda: [1, 5, 10])
    attribute_k: int = 5              # top K of the per-attribute agreement and hub diagnostic
    probe: bool = True                # linear-probe AUC per class on the frozen embeddings
    probe_split: str = "validate"     # the split the probe is trained on
    batch_size: int = 128
    max_samples: int | None = None


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: RunConfig = field(default_factory=RunConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, where: str = "config") -> "Config":
        sections = _known_fields(cls, data, where, "section(s)", "a mapping of sections", "")
        kwargs = {}
        for name, f in sections.items():
            section_cls = f.default_factory  # the section dataclass
            kwargs[name] = _section(section_cls, data.get(name) or {}, f"{where}: {name}")
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Check every value, so that a bad config fails here, before any data is read or any
        file written: ``ValueError`` naming the key. Numbers given as strings (``"1e-4"``) in
        numeric lists and maps are converted."""
        def need(cond, key, msg):
            if not cond:
                raise ValueError(f"{key} {msg}")

        import math
        import re

        for section in fields(self):   # every float field is a finite number
            values = getattr(self, section.name)
            hints = typing.get_type_hints(type(values))
            for f in fields(values):
                v = getattr(values, f.name)
                if float in (hints[f.name], *typing.get_args(hints[f.name])) and v is not None:
                    need(math.isfinite(v), f"{section.name}.{f.name}", f"must be a finite number, got {v!r}")
        self.optim.betas = _numbers(self.optim.betas, "optim.betas")
        self.objective.soft_weights = _numbers(self.objective.soft_weights, "objective.soft_weights")
        self.objective.weights = _numbers(self.objective.weights, "objective.weights")
        opt, obj, run = self.optim, self.objective, self.train
        need(len(opt.betas) == 2 and all(isinstance(b, float) and 0 <= b < 1 for b in opt.betas),
             "optim.betas", f"must be two numbers in [0, 1) [beta1, beta2], got {opt.betas!r}")
        need(0 <= opt.min_lr_ratio <= 1, "optim.min_lr_ratio",
             f"must be in [0, 1] (a share of optim.lr), got {opt.min_lr_ratio!r}")
        need(opt.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
        need(opt.text_lr is None or opt.text_lr > 0, "optim.text_lr", "must be > 0 (or null: optim.lr)")
        need(isinstance(run.device, str) and re.fullmatch(DEVICE_PATTERN, run.device) is not None,
             "train.device", f"must be auto, cpu, mps, cuda or cuda:N, got {run.device!r}")
        need(0 <= run.seed < 2 ** 32, "train.seed", "must be in [0, 2**32)")
        need(run.out_dir is None or bool(run.out_dir.strip()), "train.out_dir",
             "must name a folder (or be left unset: a new folder under runs/)")
        need(bool(run.resume.strip()), "train.resume", "must be auto, force, never or a checkpoint path")
        for key in ("w_dis", "w_adj", "w_dir"):
            need(getattr(obj, key) >= 0, f"objective.{key}", "must be >= 0")
        need(0 <= obj.threshold <= obj.upper, "objective.threshold",
             f"must be in [0, objective.upper] (the miner needs 0 <= threshold <= upper), got "
             f"threshold={obj.threshold!r}, upper={obj.upper!r}")
        need(0 <= obj.semi_hard_prob <= 1, "objective.semi_hard_prob",
             f"must be in [0, 1] (a probability), got {obj.semi_hard_prob!r}")
        need(obj.logit_temperature <= 0 or 1 / obj.logit_temperature <= MAX_LOGIT_SCALE,
             "objective.logit_temperature", f"must be >= {1 / MAX_LOGIT_SCALE} (1 / logit_temperature "
             f"is capped at {MAX_LOGIT_SCALE:g})")
        need(self.data.kind in DATA_KINDS, "data.kind", f"must be one of {DATA_KINDS}, got {self.data.kind!r}")
        need(self.data.image_size >= 1, "data.image_size", "must be >= 1")
        need(self.data.in_chans >= 1, "data.in_chans", "must be >= 1")
        need(self.data.max_length >= 2, "data.max_length", "must be >= 2 (the special tokens)")
        need(self.data.num_workers >= 0, "data.num_workers", "must be >= 0")
        for key in ("train_split", "eval_split"):
            need(bool(getattr(self.data, key).strip()), f"data.{key}", "must name a split")
        need(bool(self.eval.probe_split.strip()), "eval.probe_split", "must name a split")
        need(self.model.tokenizer_vocab_size >= 1, "model.tokenizer_vocab_size", "must be >= 1")
        need(self.eval.batch_size >= 1, "eval.batch_size", "must be >= 1")
        need(self.eval.max_samples is None or self.eval.max_samples >= 1, "eval.max_samples",
             "must be >= 1 (or null: every sample)")

        parts = objective_parts(self.objective.kind)  # raises on unknown or repeated parts
        unknown = sorted(set(self.objective.weights) - set(parts))
        need(not unknown, "objective.weights", f"names parts not in objective.kind: {unknown}")
        need(all(isinstance(w, (int, float)) and not isinstance(w, bool) and 0 <= w < float("inf")
                 for w in self.objective.weights.values()), "objective.weights",
             "must map parts to finite numbers >= 0")
        need(any(self.objective.weights.get(p, 1.0) != 0 for p in parts), "objective.weights",
             f"are all 0 for the parts of objective.kind {parts}: the loss would be 0 and nothing trains")
        need(MARGIN_RANGE[0] <= self.objective.margin <= MARGIN_RANGE[1], "objective.margin",
             f"must be in [{MARGIN_RANGE[0]:g}, {MARGIN_RANGE[1]:g}] (cosine distances lie in [0, 2]), "
             f"got {self.objective.margin!r}")
        need(self.objective.tie_break in TIE_BREAKS, "objective.tie_break", f"must be one of {TIE_BREAKS}")
        need(self.objective.min_positive_score >= 0, "objective.min_positive_score", "must be >= 0")
        need(0 <= self.objective.soft_own_weight <= 1, "objective.soft_own_weight", "must be in [0, 1]")
        need(self.objective.target_temperature > 0, "objective.target_temperature", "must be > 0")
        sw = self.objective.soft_weights
        need(sw == [] or (len(sw) == 3 and all(isinstance(w, (int, float)) and not isinstance(w, bool)
                                              and 0 <= w < float("inf") for w in sw)),
             "objective.soft_weights", "must be [] or three finite numbers >= 0 [w_dis, w_adj, w_dir]")
        need(self.train.amp in AMP_MODES, "train.amp", f"must be one of {AMP_MODES}")
        need(self.optim.schedule in SCHEDULES, "optim.schedule", f"must be one of {SCHEDULES}")
        need(self.data.entities in ("extracted", "ground_truth"), "data.entities",
             "must be 'extracted' or 'ground_truth'")
        need(self.train.steps >= 1, "train.steps", "must be >= 1")
        need(self.train.batch_size >= 2, "train.batch_size", "must be >= 2 (mining needs pairs)")
        need(self.train.log_every >= 1, "train.log_every", "must be >= 1")
        need(self.train.ckpt_every >= 1, "train.ckpt_every", "must be >= 1")
        need(self.optim.lr > 0, "optim.lr", "must be > 0")
        need(self.optim.eps > 0, "optim.eps", "must be > 0")
        need(self.optim.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
        need(self.optim.clip_grad >= 0, "optim.clip_grad", "must be >= 0")
        need(self.objective.memory_bank >= 0, "objective.memory_bank", "must be >= 0")
        # the bank keeps image and text embeddings of every row on the training device: 10**6 rows
        # of 2 x 512 float32 are 4 GB; more is a typo, and failed only when the bank was allocated
        need(self.objective.memory_bank <= MAX_MEMORY_BANK, "objective.memory_bank",
             f"must be <= {MAX_MEMORY_BANK:,} rows (it holds every row's embeddings on the device)")
        need(self.objective.logit_temperature > 0, "objective.logit_temperature", "must be > 0")
        need(self.objective.pool_size >= 2, "objective.pool_size", "must be >= 2")
        need(self.model.embed_dim >= 1, "model.embed_dim", "must be >= 1")
        need(self.model.kind in MODEL_KINDS, "model.kind", f"must be one of {MODEL_KINDS}, got {self.model.kind!r}")
        if self.model.kind == "open_clip":
            need(bool((self.model.name or "").strip()), "model.name",
                 "must name the open_clip model (a name, a model-config .json or local-dir:<folder>) "
                 "with model.kind=open_clip")
            # the open_clip model is one module: a text learning rate would not reach its text tower
            need(self.optim.text_lr is None, "optim.text_lr", "is not supported with model.kind=open_clip")
        else:
            for key in ("name", "checkpoint"):
                need(getattr(self.model, key) is None, f"model.{key}",
                     "is for model.kind=open_clip (the dual kind takes model.image and model.text)")
        need(self.model.projection in PROJECTIONS, "model.projection", f"must be one of {PROJECTIONS}")
        for key in ("image_projection", "text_projection"):
            need(getattr(self.model, key) in (None, *PROJECTIONS), f"model.{key}",
                 f"must be one of {PROJECTIONS} (or null: model.projection)")
        need(self.data.normalize in NORMALIZATIONS, "data.normalize", f"must be one of {NORMALIZATIONS}")
        need(self.data.normalize != "imagenet" or self.data.in_chans == 3, "data.in_chans",
             "must be 3 with data.normalize=imagenet (the gray channel repeated to RGB)")
        obj = self.objective
        need(obj.offline_triplets >= 0, "objective.offline_triplets", "must be >= 0")
        need(obj.offline_set_size >= 0, "objective.offline_set_size", "must be >= 0")
        need(obj.offline_triplets == 0 or "medtrim_offline" in parts, "objective.offline_triplets",
             "needs objective.kind=medtrim_offline")
        need(obj.offline_set_size == 0 or obj.offline_triplets > 0, "objective.offline_set_size",
             "needs objective.offline_triplets > 0 (sets are drawn when the triplets are mined once)")
        need(obj.offline_set_size == 0 or obj.offline_set_size >= obj.pool_size, "objective.offline_set_size",
             f"must be >= objective.pool_size ({obj.pool_size}) to draw pools from a set")
        need(obj.offline_triplets == 0 or obj.offline_triplets >= self.train.batch_size // 3,
             "objective.offline_triplets", f"must be at least one batch ({self.train.batch_size // 3} "
             "triplets: train.batch_size / 3)")
        need(isinstance(self.eval.ks, list) and len(self.eval.ks) > 0
             and all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in self.eval.ks),
             "eval.ks", f"must be a non-empty list of whole numbers K >= 1, got {self.eval.ks!r}")
        need(self.eval.attribute_k >= 1, "eval.attribute_k", "must be >= 1")
        if "medtrim_offline" in parts:
            need(self.train.batch_size % 3 == 0, "train.batch_size",
                 "must be a multiple of 3 for medtrim_offline (anchors, positives, negatives)")


def objective_parts(kind: str) -> list[str]:
    """The parts of ``objective.kind`` (``"medtrim+infonce"`` -> ``["medtrim", "infonce"]``);
    ``ValueError`` naming the key for an unknown or repeated part, or both MedTrim modes."""
    parts = [p.strip() for p in str(kind).split("+")]
    bad = [p for p in parts if p not in OBJECTIVE_PARTS]
    if bad or not parts:
        raise ValueError(f"objective.kind must be one of {OBJECTIVE_PARTS} or a sum of them joined "
                         f"by '+' (e.g. 'medtrim+infonce'), got {kind!r}")
    if len(set(parts)) != len(parts):
        raise ValueError(f"objective.kind repeats a part: {kind!r}")
    if "medtrim" in parts and "medtrim_offline" in parts:
        raise ValueError("objective.kind: medtrim and medtrim_offline are two mining modes of one "
                         "loss; use one")
    return parts


def _known_fields(dataclass_type, values, where: str, what: str, mapping: str, some: str) -> dict:
    """The fields of ``dataclass_type`` after checking that ``values`` is a dict naming only them."""
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected {mapping}, got {type(values).__name__}")
    known = {f.name: f for f in fields(dataclass_type)}
    unknown = sorted(set(values) - set(known))
    section = next((f.name for f in fields(Config) if f.default_factory is dataclass_type), None)
    renamed = [f"{section}.{k} was renamed {section}.{RENAMED_KEYS[section, k]}" for k in unknown
               if (section, k) in RENAMED_KEYS]
    if renamed:
        raise ValueError(f"{where}: {'; '.join(renamed)}")
    if unknown:
        raise ValueError(f"{where}: unknown {what} {unknown}; expected {some}{sorted(known)}")
    return known


def _section(section_cls, values: dict, where: str):
    _known_fields(section_cls, values, where, "key(s)", "a mapping", "some of ")
    hints = typing.get_type_hints(section_cls)
    out = {}
    for key, value in values.items():
        out[key] = _coerce(value, hints[key], f"{where}.{key}")
    return section_cls(**out)


def _coerce(value: Any, hint, key: str):
    """Check ``value`` against a simple type hint (int, float, str, bool, dict, list, Optional)."""
    args = typing.get_args(hint)
    if type(None) in args:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():   # e.g. train.steps=1e3
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        number = _number_text(value)
        if number is not None:   # "1e-4": YAML 1.1 reads exponents without a dot as text
            return number
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint in (dict, list):
        if isinstance(value, hint):
            return value
    else:  # pragma: no cover - every field uses one of the hints above
        return value
    raise ValueError(f"{key} must be {getattr(hint, '__name__', hint)}, got {value!r}")


def _number_text(value: Any) -> float | None:
    """The float a numeric string spells (``"1e-4"``, ``" 3 "``), else None."""
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _numbers(values, key: str):
    """A list or map of numbers with numeric strings converted to floats (ints too); ``ValueError``
    naming ``key`` for anything else."""
    def one(v, where):
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
        number = _number_text(v)
        if number is None:
            raise ValueError(f"{where} must be a number, got {v!r}")
        return number
    if isinstance(values, dict):
        return {k: one(v, f"{key}.{k}") for k, v in values.items()}
    return [one(v, f"{key}[{i}]") for i, v in enumerate(values)]


@functools.lru_cache(maxsize=None)
def _yaml_loader():
    """PyYAML's safe loader without aliases, plus YAML 1.2's floats without a dot (``1e-4``, ``5E3``), which
    YAML 1.1 reads as strings: the most common way to write a learning rate."""
    import re

    from ..utils.yamlsafe import no_alias_safe_loader

    class Loader(no_alias_safe_loader()):  # no aliases: an alias bomb would pass, then eat memory
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
        list("-+0123456789."))
    return Loader


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.steps=200"`` -> (["train", "steps"], 200); values are parsed as YAML scalars."""
    import yaml

    if "=" not in text:
        raise ValueError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if len(path) < 2:
        raise ValueError(f"override {text!r} must name a section and a key, e.g. train.steps=100")
    try:
        value = yaml.load(raw, Loader=_yaml_loader()) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ValueError(f"override {text!r}: value is not valid YAML ({exc})") from None
    return path, value


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Set nested keys of a config mapping (``model.image.depth=4`` reaches into dict fields).

    Overrides that change ``data.kind`` drop the mapping's ``data.options`` (they belong to the
    other dataset kind: phantom counts mean nothing to a manifest); ``data.options`` set by the
    overrides themselves, before or after the kind, are kept."""
    data = dict(data)
    parsed = [parse_override(text) for text in overrides]
    kinds = [value for path, value in parsed if path == ["data", "kind"]]
    section = data.get("data")
    if kinds and isinstance(section, dict) and "options" in section \
            and kinds[-1] != section.get("kind", DataConfig.kind):
        data["data"] = {k: v for k, v in section.items() if k != "options"}
    for path, value in parsed:
        node = data
        for part in path[:-1]:
            child = node.get(part)
            child = dict(child) if isinstance(child, dict) else {}
            node[part] = child
            node = child
        node[path[-1]] = value
    return data


def preset_names() -> list[str]:
    folder = resources.files("medtrim_ext") / "data" / "configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def read_config_file(path_or_preset: str | Path) -> tuple[dict, str]:
    """The raw mapping of a YAML config file, or of a packaged preset given by name."""
    import yaml

    path = Path(path_or_preset)
    presets = preset_names()
    # configs/<name>.yaml: the repository folder these presets were packaged from
    preset = (str(path_or_preset) if str(path_or_preset) in presets else
              path.stem if path.parent.name == "configs" and path.suffix == ".yaml" and path.stem in presets
              else None)
    if path.is_file():
        text, where = _read_text(path), str(path)
    elif preset is not None:
        res = resources.files("medtrim_ext") / "data" / "configs" / f"{preset}.yaml"
        text, where = res.read_text(encoding="utf-8"), f"preset {preset!r}"
    else:
        raise ValueError(f"config {str(path_or_preset)!r}: no such file, and not a preset "
                         f"(presets: {', '.join(preset_names())})")
    try:
        data = yaml.load(text, Loader=_yaml_loader()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"config {where}: not valid YAML ({exc})") from None
    except RecursionError:   # [[[[...: the YAML composer recurses once per level
        raise ValueError(f"config {where}: YAML nested too deeply to read") from None
    return data, where


def _read_text(path: Path) -> str:
    """A config file's text; one that cannot be read or is not UTF-8 text (a binary file given as
    --config) raises a ValueError naming it, not a bare UnicodeDecodeError."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"config {str(path)!r} cannot be read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"config {str(path)!r} is not a YAML text file (byte {exc.start} is not "
                         "UTF-8)") from None
    if "\0" in text:
        raise ValueError(f"config {str(path)!r} is not a YAML text file (it holds NUL bytes)")
    return text


def upgrade_config_dict(data: dict) -> dict:
    """A stored run config (a checkpoint's ``config``, a run's ``config.json``) of an older
    version with its renamed keys (:data:`RENAMED_KEYS`) under their new names; other values are
    left as they are (a mapping that is no config is left for :meth:`Config.from_dict` to refuse)."""
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for (section, old), new in RENAMED_KEYS.items():
        values = out.get(section)
        if isinstance(values, dict) and old in values and new not in values:
            values = dict(values)
            values[new] = values.pop(old)
            out[section] = values
    return out


def load_config(path_or_preset: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """A checked :class:`Config` from a YAML file (or preset name; None: the defaults) plus overrides."""
    data, where = read_config_file(path_or_preset) if path_or_preset is not None else ({}, "defaults")
    return Config.from_dict(apply_overrides(data, overrides), where)


def replace(cfg: Config, **sections) -> Config:
    """A copy of ``cfg`` with some fields of some sections replaced: ``replace(cfg, train={"seed": 1})``."""
    data = cfg.to_dict()
    for name, values in sections.items():
        data[name] = {**data[name], **values}
    return Config.from_dict(data, "replace()")


__all__ = ["Config", "DataConfig", "EvalConfig", "ModelConfig", "OBJECTIVE_PARTS", "ObjectiveConfig",
           "OptimConfig", "RunConfig", "apply_overrides", "load_config", "objective_parts",
           "parse_override", "preset_names", "read_config_file", "replace", "upgrade_config_dict"]
