"""MetaEntities: the diseases, adjectives and directions of N reports, packed for the kernels."""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import torch

from .bits import num_words, pack_bits, unpack_bits
from .vocabulary import NO_FINDING, Vocabulary


class MetaEntities:
    """Meta-entities of N samples over one :class:`Vocabulary`.

    Per sample: a set of diseases and, per disease, a set of adjectives and a set of directions.
    Stored as bitsets (what the kernels read):

    - ``disease_bits``: int32 ``(N,)``, bit d set when disease class d is present
    - ``adjective_bits``: int32 ``(N, C, ceil(A / 32))``
    - ``direction_bits``: int32 ``(N, C, ceil(R / 32))``

    An empty sample means "no finding". Descriptors of a disease that is absent are dropped.
    Build with :meth:`from_records` or :meth:`from_masks`; move with :meth:`to`; subset with
    ``ents[idx]`` (int, slice, index list/tensor or bool mask); ``len(ents)`` is N.
    """

    def __init__(self, disease_bits: torch.Tensor, adjective_bits: torch.Tensor,
                 direction_bits: torch.Tensor, vocabulary: Vocabulary):
        """Wrap packed bitsets (see the class docstring). Raises ``ValueError`` for a bit beyond the
        vocabulary's width (a disease bit >= C, or a padding bit of the last adjective/direction
        word): the kernels would count it, the vocabulary cannot name it. On CUDA this check
        reads one flag back (a synchronisation); derived sets (indexing, ``to``, ``cat``) skip it."""
        self._set(disease_bits, adjective_bits, direction_bits, vocabulary)
        _check_no_stray_bits(disease_bits, adjective_bits, direction_bits, vocabulary)

    def _set(self, disease_bits, adjective_bits, direction_bits, vocabulary) -> None:
        """Check shapes, dtypes and devices and store the tensors (no look at their values)."""
        if not isinstance(vocabulary, Vocabulary):
            raise TypeError(f"vocabulary must be a Vocabulary, got {type(vocabulary).__name__}")
        c, a, r = vocabulary.sizes
        if not isinstance(disease_bits, torch.Tensor):
            raise TypeError("disease_bits must be an int32 tensor")
        n = disease_bits.shape[0] if disease_bits.dim() == 1 else -1
        expected = {"disease_bits": (disease_bits, (n,)),
                    "adjective_bits": (adjective_bits, (n, c, num_words(a))),
                    "direction_bits": (direction_bits, (n, c, num_words(r)))}
        for name, (t, shape) in expected.items():
            if not isinstance(t, torch.Tensor) or t.dtype != torch.int32:
                raise TypeError(f"{name} must be an int32 tensor")
            if tuple(t.shape) != shape:
                raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
            if t.device != disease_bits.device:
                raise ValueError(f"{name} is on {t.device} but disease_bits on {disease_bits.device}")
        self.disease_bits = disease_bits
        self.adjective_bits = adjective_bits
        self.direction_bits = direction_bits
        self.vocabulary = vocabulary

    @classmethod
    def _derived(cls, disease_bits, adjective_bits, direction_bits, vocabulary) -> "MetaEntities":
        """For bitsets taken from checked ones (subsets, copies, concatenations, gathers): the
        layout is checked, the values are not (no device synchronisation per batch)."""
        self = cls.__new__(cls)
        self._set(disease_bits, adjective_bits, direction_bits, vocabulary)
        return self

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_masks(cls, diseases: torch.Tensor, adjectives: torch.Tensor, directions: torch.Tensor,
                   vocabulary: Vocabulary | None = None) -> "MetaEntities":
        """From bool masks ``diseases (N, C)``, ``adjectives (N, C, A)``, ``directions (N, C, R)``,
        whose columns follow ``vocabulary`` (default: the packaged ontology)."""
        vocab = vocabulary if vocabulary is not None else Vocabulary.default()
        c, a, r = vocab.sizes
        for name, t, dims, cols in (("diseases", diseases, 2, c), ("adjectives", adjectives, 3, a),
                                    ("directions", directions, 3, r)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if t.dtype != torch.bool:
                raise TypeError(f"{name} must be a bool tensor, got {t.dtype} (use .bool())")
            if t.dim() != dims:
                raise ValueError(f"{name} must be {dims}-D, got shape {tuple(t.shape)}")
            if t.shape[-1] != cols:
                raise ValueError(f"{name} has {t.shape[-1]} columns but the vocabulary "
                                 f"{vocab.name!r} has {cols}; pass vocabulary=...")
        n = diseases.shape[0]
        for name, t in (("adjectives", adjectives), ("directions", directions)):
            if tuple(t.shape[:2]) != (n, c):
                raise ValueError(f"{name} must have shape ({n}, {c}, ...) to match diseases, "
                                 f"got {tuple(t.shape)}")
            if t.device != diseases.device:
                raise ValueError(f"{name} is on {t.device} but diseases on {diseases.device}")
        present = diseases.unsqueeze(-1)
        # packed from masks of exactly the vocabulary's width: no stray bits to look for
        return cls._derived(pack_bits(diseases).squeeze(-1), pack_bits(adjectives & present),
                            pack_bits(directions & present), vocab)

    @classmethod
    def from_records(cls, records: Sequence[Mapping], vocabulary: Vocabulary | None = None,
                     device: torch.device | str | None = None) -> "MetaEntities":
        """From one dict per report: ``{disease: {"adjs": [...], "dirs": [...]}}``.

        Names go through the vocabulary's synonyms (case-insensitive); unknown names raise
        ``ValueError`` naming the record and the name. ``{}`` (or ``{"no finding": ...}``) is a
        report with no finding.
        """
        vocab = vocabulary if vocabulary is not None else Vocabulary.default()
        if isinstance(records, (str, bytes, Mapping)) or not isinstance(records, Iterable):
            raise TypeError("records must be a sequence of dicts, one per report")
        records = list(records)
        c, a, r = vocab.sizes
        # collect coordinates in Python, then set them in one indexing call per mask
        dis_at, adj_at, dir_at = [], [], []
        for i, record in enumerate(records):
            if not isinstance(record, Mapping):
                raise TypeError(f"records[{i}] must be a dict, got {type(record).__name__}")
            names = [k for k in record if not (isinstance(k, str) and k.strip().lower() == NO_FINDING)]
            if len(names) != len(record) and names:
                raise ValueError(f"records[{i}] lists {NO_FINDING!r} together with diseases {names}")
            for name in names:
                try:
                    d = vocab.disease_index(name)
                    spec = record[name]
                    dis_at.append((i, d))
                    adj_at.extend((i, d, vocab.adjective_index(x)) for x in _descriptor_list(spec, "adjs"))
                    dir_at.extend((i, d, vocab.direction_index(x)) for x in _descriptor_list(spec, "dirs"))
                except (TypeError, ValueError) as exc:
                    raise type(exc)(f"records[{i}]: {exc}") from None
        dis = torch.zeros(len(records), c, dtype=torch.bool)
        adj = torch.zeros(len(records), c, a, dtype=torch.bool)
        dirs = torch.zeros(len(records), c, r, dtype=torch.bool)
        for mask, coords in ((dis, dis_at), (adj, adj_at), (dirs, dir_at)):
            if coords:
                mask[tuple(torch.tensor(coords, dtype=torch.int64).T)] = True
        ents = cls.from_masks(dis, adj, dirs, vocab)
        return ents.to(device) if device is not None else ents

    @classmethod
    def cat(cls, parts: Sequence["MetaEntities"]) -> "MetaEntities":
        """Concatenate entity sets that share a vocabulary and a device."""
        parts = list(parts)
        if not parts:
            raise ValueError("cat needs at least one MetaEntities")
        for i, p in enumerate(parts):   # before the attribute checks below, which would fail first
            if not isinstance(p, MetaEntities):
                raise TypeError(f"parts[{i}] must be MetaEntities, got {type(p).__name__}")
        for i, p in enumerate(parts[1:], 1):
            if p.vocabulary != parts[0].vocabulary:
                raise ValueError(f"parts[{i}] has a different vocabulary than parts[0]")
            if p.device != parts[0].device:
                raise ValueError(f"parts[{i}] is on {p.device} but parts[0] on {parts[0].device}")
        return cls._derived(torch.cat([p.disease_bits for p in parts]),
                            torch.cat([p.adjective_bits for p in parts]),
                            torch.cat([p.direction_bits for p in parts]), parts[0].vocabulary)

    def unique(self) -> tuple["MetaEntities", torch.Tensor, torch.Tensor]:
        """The distinct records, in the manner of ``torch.unique(return_inverse=True,
        return_counts=True)``: ``(distinct, inverse, counts)`` with ``self[i] == distinct[inverse[i]]``
        and ``counts[u]`` the number of samples holding record ``u``.

        Works on the packed bits, on the device they live on, with O(N) extra memory: each row
        gets a 64-bit hash, the hashes are made unique (a sort), and every row is compared with its
        group's first row, so a hash collision is never merged silently (it falls back to
        ``torch.unique(dim=0)``). The order of the distinct records depends on their content only,
        so any order of the rows gives the same ``distinct`` and ``counts``.
        """
        n = len(self)
        if n == 0:
            empty = torch.zeros(0, dtype=torch.int64, device=self.device)
            return self, empty, empty.clone()
        # one column at a time over views of the bits: no (N, width) copy of the whole set
        columns = [self.disease_bits[:, None], self.adjective_bits.reshape(n, -1),
                   self.direction_bits.reshape(n, -1)]
        h = torch.zeros(n, dtype=torch.int64, device=self.device)
        for part in columns:
            for j in range(part.shape[1]):   # a polynomial hash, wrapping mod 2^64
                h = (h * 1_000_003) ^ (part[:, j].to(torch.int64) + 0x9E3779B9)
        keys, inverse, counts = torch.unique(h, return_inverse=True, return_counts=True)
        first = torch.full((len(keys),), n, dtype=torch.int64, device=self.device)
        first.scatter_reduce_(0, inverse, torch.arange(n, device=self.device), reduce="amin")
        # every row equals its group's first row, checked in blocks (bounded extra memory)
        rep = first[inverse]
        block = 1 << 16
        same = all(bool((part[k:k + block] == part[rep[k:k + block]]).all())
                   for part in columns for k in range(0, n, block))
        if not same:   # a collision: exact, slower path
            rows = torch.cat(columns, dim=1)
            _, inverse, counts = torch.unique(rows, dim=0, return_inverse=True, return_counts=True)
            first = torch.full((len(counts),), n, dtype=torch.int64, device=self.device)
            first.scatter_reduce_(0, inverse, torch.arange(n, device=self.device), reduce="amin")
        return self[first], inverse, counts

    # -- views -----------------------------------------------------------------------------------
    def masks(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Bool masks ``(N, C)``, ``(N, C, A)``, ``(N, C, R)`` in vocabulary column order."""
        c, a, r = self.vocabulary.sizes
        return (unpack_bits(self.disease_bits.unsqueeze(-1), c), unpack_bits(self.adjective_bits, a),
                unpack_bits(self.direction_bits, r))

    def to_records(self) -> list[dict]:
        """One ``{disease: {"adjs": [...], "dirs": [...]}}`` dict per sample, canonical names."""
        vocab = self.vocabulary
        dis, adj, dirs = (m.cpu() for m in self.masks())
        records = []
        for i in range(len(self)):
            rec = {}
            for d in dis[i].nonzero().flatten().tolist():
                rec[vocab.diseases[d]] = {
                    "adjs": [vocab.adjectives[k] for k in adj[i, d].nonzero().flatten().tolist()],
                    "dirs": [vocab.directions[k] for k in dirs[i, d].nonzero().flatten().tolist()],
                }
            records.append(rec)
        return records

    def to(self, device: torch.device | str) -> "MetaEntities":
        device = torch.device(device)
        if device == self.device:
            return self
        return MetaEntities._derived(self.disease_bits.to(device), self.adjective_bits.to(device),
                                     self.direction_bits.to(device), self.vocabulary)

    def cpu(self) -> "MetaEntities":
        return self.to("cpu")

    def cuda(self, device: int | None = None) -> "MetaEntities":
        return self.to(torch.device("cuda", device) if device is not None else "cuda")

    @property
    def device(self) -> torch.device:
        return self.disease_bits.device

    def __len__(self) -> int:
        return self.disease_bits.shape[0]

    def __getitem__(self, idx) -> "MetaEntities":
        if isinstance(idx, int):
            n = len(self)
            if not -n <= idx < n:
                raise IndexError(f"index {idx} is out of range for {n} samples")
            idx = slice(idx % n, idx % n + 1)
        elif isinstance(idx, torch.Tensor):
            if idx.dtype not in (torch.bool, torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
                raise TypeError(f"index tensor must be bool or integer, got {idx.dtype}")
            idx = idx.to(self.device)
        return MetaEntities._derived(self.disease_bits[idx], self.adjective_bits[idx],
                                     self.direction_bits[idx], self.vocabulary)

    def __repr__(self) -> str:
        return (f"MetaEntities(n={len(self)}, vocabulary={self.vocabulary.name!r} "
                f"{self.vocabulary.sizes}, device={self.device})")


def _stray_mask(width: int) -> int:
    """The int32 value of the bits of a last word that lie beyond ``width`` flags."""
    used = width % 32 if width else 0
    if width and used == 0:
        return 0
    return ~((1 << used) - 1)  # as a negative Python int: fits int32 for used in [0, 31]


def _check_no_stray_bits(disease_bits, adjective_bits, direction_bits, vocabulary) -> None:
    c, a, r = vocabulary.sizes
    for name, words, width, unit in (("disease_bits", disease_bits, c, "disease classes"),
                                     ("adjective_bits", adjective_bits, a, "adjectives"),
                                     ("direction_bits", direction_bits, r, "directions")):
        stray = _stray_mask(width)
        if stray == 0 or words.numel() == 0:
            continue
        last = words if words.dim() == 1 else words[..., -1]
        bad = (last & stray) != 0
        if bool(bad.any()):
            at = bad.nonzero()[0].tolist()
            where = f"sample {at[0]}" + (f", class {at[1]}" if len(at) > 1 else "")
            raise ValueError(
                f"{name} ({where}) has bits set beyond the vocabulary's {width} {unit} "
                f"({vocabulary.name!r}): the kernels would count them; build entities with "
                f"MetaEntities.from_masks / from_records, or clear those bits")


def _descriptor_list(spec, key: str) -> list:
    """The adjective or direction names of one disease entry (missing or None = none)."""
    if spec is None:
        return []
    if not isinstance(spec, Mapping):
        raise TypeError(f"the value of a disease must be a dict with 'adjs'/'dirs', got {spec!r}")
    unknown = set(spec) - {"adjs", "dirs"}
    if unknown:
        raise ValueError(f"unexpected keys {sorted(unknown)} in {spec!r} (only 'adjs' and 'dirs')")
    names = spec.get(key)
    if names is None:
        return []
    if isinstance(names, str) or not isinstance(names, Iterable):
        raise TypeError(f"{key!r} must be a list of names, got {names!r}")
    return list(names)
