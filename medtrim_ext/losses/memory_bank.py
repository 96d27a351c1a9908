"""MemoryBank: a FIFO ring of past embeddings and meta-entities, to mine among more than one batch."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from ..entities.meta_entities import MetaEntities
from ..utils.checks import check_ids, check_int, check_tensor
from ..entities.vocabulary import Vocabulary

ENTRIES = ("img", "txt", "disease_bits", "adjective_bits", "direction_bits", "ids")
# what the state of versions before the module held (a checkpoint's "memory_bank"): still loads
_LEGACY_KEYS = ("size", "dim", "ptr", "count", "vocabulary", *ENTRIES)


class MemoryBank(nn.Module):
    """The last ``size`` (image embedding, text embedding, meta-entities, sample id) entries.

    A training step mines among the current batch plus the bank, then pushes the batch::

        cand_img, cand_txt, cand_ents, cand_ids = bank.candidates(img, txt, ents, ids)
        out = objective(img, txt, ents, cand_img=cand_img, cand_txt=cand_txt,
                        cand_entities=cand_ents, anchor_ids=ids, candidate_ids=cand_ids)
        out.loss.backward()
        bank.push(img, txt, ents, ids)

    - ``candidates`` returns the current batch first (still attached to the graph, so positives
      and negatives from the batch get gradients), then the bank's entries (detached) in slot
      order. ``ids`` are sample ids (dataset indices, study ids): the miner never pairs an anchor
      with a candidate of the same id, so an anchor does not meet its own copy from the batch or
      from an earlier epoch in the bank. The embeddings come back in float32 (bf16 under autocast
      is promoted; gradients flow back in the input dtype).
    - ``push`` stores detached float32 copies (bf16 under autocast loses nothing more); pushing
      more rows than ``size`` at once keeps the last ``size``; the oldest entries are overwritten.
    - The bank lives on the device of the embeddings it is given (it moves there if needed);
      entities and ids are moved there too.
    - ``vocabulary``: the entities' vocabulary; ``None`` adopts the first pushed one.
    - An ``nn.Module``: the entries are buffers (none before the first push, then ``size`` rows;
      they move with ``.to(device)``), the write position, count and vocabulary its extra state.
      ``state_dict()`` / ``load_state_dict()`` (tensors and plain values) save and restore them,
      also as part of an enclosing module's state (the training step's objective): a resumed run
      gets the same candidates. An empty bank loads a filled one's state and the other way round;
      the plain-dict state of earlier versions loads too (:meth:`convert_legacy_state`).
    - ``len(bank)`` is the number of entries, so an empty bank is falsy: test ``bank is None``.
    """

    def __init__(self, size: int, dim: int, vocabulary: Vocabulary | None = None):
        super().__init__()
        check_int("size", size)
        check_int("dim", dim)
        if vocabulary is not None and not isinstance(vocabulary, Vocabulary):
            raise TypeError(f"vocabulary must be a Vocabulary, got {type(vocabulary).__name__}")
        self.size, self.dim = size, dim
        self.vocabulary = vocabulary
        self._ptr = 0    # next slot to write
        self._count = 0  # valid entries (slots [0, count) until the ring is full)
        # empty (0-row) buffers until the first push or load: their widths follow the vocabulary
        for key, (shape, dtype) in self._layout(0).items():
            self.register_buffer(key, torch.zeros(shape, dtype=dtype))

    def __len__(self) -> int:
        return self._count

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}, entries={self._count}, device={self.device}"

    @property
    def device(self) -> torch.device | None:
        """Where the entries live (``None`` before the first push or load)."""
        return self.img.device if self.allocated else None

    @property
    def allocated(self) -> bool:
        """Whether the ring's ``size`` rows exist (after the first push or a load of entries)."""
        return self.img.shape[0] > 0

    def reset(self) -> None:
        """Forget all entries (keeps the storage)."""
        self._ptr = self._count = 0

    # -- writing and reading -----------------------------------------------------------------
    def push(self, img: torch.Tensor, txt: torch.Tensor, entities: MetaEntities, ids: torch.Tensor) -> None:
        """Store detached float32 copies of a batch, overwriting the oldest entries."""
        img, txt, entities, ids = self._check_batch(img, txt, entities, ids)
        k = img.shape[0]
        if k == 0:
            return
        if k > self.size:  # only the last `size` rows would survive anyway
            img, txt, ids = img[-self.size:], txt[-self.size:], ids[-self.size:]
            entities, k = entities[slice(k - self.size, k)], self.size
        self._allocate(img.device)
        slots = (self._ptr + torch.arange(k, device=img.device)) % self.size
        with torch.no_grad():
            self.img[slots] = img.detach().float()
            self.txt[slots] = txt.detach().float()
            self.disease_bits[slots] = entities.disease_bits
            self.adjective_bits[slots] = entities.adjective_bits
            self.direction_bits[slots] = entities.direction_bits
            self.ids[slots] = ids
        self._ptr = (self._ptr + k) % self.size
        self._count = min(self._count + k, self.size)

    def candidates(self, img: torch.Tensor, txt: torch.Tensor, entities: MetaEntities, ids: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, MetaEntities, torch.Tensor]:
        """``(cand_img, cand_txt, cand_entities, cand_ids)``: the batch first, then the bank."""
        img, txt, entities, ids = self._check_batch(img, txt, entities, ids)
        dtype = torch.promote_types(torch.promote_types(img.dtype, txt.dtype), torch.float32)
        img, txt = img.to(dtype), txt.to(dtype)
        if self._count == 0:
            return img, txt, entities, ids
        if self.device != img.device:
            self.to(img.device)
        n = self._count
        # pushed entities were checked when built, loaded ones when loaded
        bank_ents = MetaEntities._derived(self.disease_bits[:n], self.adjective_bits[:n],
                                          self.direction_bits[:n], self.vocabulary)
        return (torch.cat([img, self.img[:n].to(dtype)]), torch.cat([txt, self.txt[:n].to(dtype)]),
                MetaEntities.cat([entities, bank_ents]), torch.cat([ids, self.ids[:n]]))

    # -- checkpoints -------------------------------------------------------------------------
    # The entries are buffers (all `size` rows once allocated, none before), the write position
    # and the vocabulary the module's extra state: ``state_dict()`` holds them, under the bank's
    # prefix inside an enclosing module's (a training checkpoint's objective state).
    def get_extra_state(self) -> dict:
        """The plain values of the state: size, dim, write position, count, vocabulary names."""
        return {"size": self.size, "dim": self.dim, "ptr": self._ptr, "count": self._count,
                "vocabulary": None if self.vocabulary is None else
                [list(self.vocabulary.diseases), list(self.vocabulary.adjectives),
                 list(self.vocabulary.directions)]}

    def set_extra_state(self, state: dict) -> None:
        # checked by _load_from_state_dict before any buffer was touched
        self._ptr, self._count = state["ptr"], state["count"]
        self.vocabulary = self._saved_vocabulary(state)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Restore a ``state_dict()`` (size and dim must match; the entries go to the bank's
        device, or stay on the CPU until the next use). The state of versions before the bank was
        a module (a plain dict with ``size``, ``ptr``, ``img``, ...) is converted and loads too."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state must be a dict, got {type(state_dict).__name__}")
        if "_extra_state" not in state_dict and any(k in state_dict for k in _LEGACY_KEYS):
            state_dict = self.convert_legacy_state(state_dict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def convert_legacy_state(self, state: Mapping) -> dict:
        """The ``state_dict()`` equal to a state saved before the bank was a module (its entries
        held only the ``count`` filled rows)."""
        missing = [k for k in _LEGACY_KEYS if k not in state]
        if missing:
            raise ValueError(f"memory bank state misses keys {missing}")
        extra = {k: state[k] for k in ("size", "dim", "ptr", "count", "vocabulary")}
        if state["img"] is None:  # nothing was ever pushed
            return {"_extra_state": extra, **self._empty_buffers()}
        out = {"_extra_state": extra}
        n = state["count"]
        for key in ENTRIES:
            value = state[key]
            if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != n:
                raise ValueError(f"memory bank state entry {key!r} does not fit the bank "
                                 f"(expected {n} rows)")
            pad = value.new_zeros((max(int(state["size"]) - n, 0), *value.shape[1:]))
            out[key] = torch.cat([value, pad])
        return out

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        extra = state_dict.get(prefix + "_extra_state")
        if extra is None:  # nothing of a bank in it (a run without one): torch lists what is missing
            return super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                                 missing_keys, unexpected_keys, error_msgs)
        vocab = self._check_extra_state(extra)
        # the buffers take the saved shapes (none or `size` rows) before torch copies into them
        layout = self._layout(self.size, vocab)
        shapes = {}
        for key, (shape, dtype) in layout.items():
            value = state_dict.get(prefix + key)
            if value is None:
                continue  # torch reports the missing key
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"memory bank state entry {key!r} must be a tensor, got "
                                 f"{type(value).__name__}")
            rows = value.shape[0] if value.dim() else -1
            if rows not in (0, self.size) or (rows and tuple(value.shape) != shape) or value.dtype != dtype:
                raise ValueError(f"memory bank state entry {key!r} does not fit the bank (expected 0 or "
                                 f"{shape} {dtype}, got {tuple(value.shape)} {value.dtype})")
            shapes[key] = value.shape
        rows = {shape[0] for shape in shapes.values()}
        if len(rows) > 1:
            raise ValueError("memory bank state: its entries do not all hold the same number of rows")
        if rows and extra["count"] > min(rows):
            raise ValueError(f"memory bank state has {extra['count']} entries but no stored rows")
        # checked: now the buffers take the saved shapes, on the bank's device
        device = self.img.device
        for key, shape in shapes.items():
            self._buffers[key] = torch.zeros(shape, dtype=layout[key][1], device=device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        n = self._count
        try:  # bits beyond the vocabulary's width would score differently from the reference
            if n:
                MetaEntities(self.disease_bits[:n], self.adjective_bits[:n], self.direction_bits[:n],
                             self.vocabulary)
        except ValueError as exc:
            self._ptr = self._count = 0
            raise ValueError(f"memory bank state: {exc}") from None

    def _check_extra_state(self, state) -> Vocabulary | None:
        """The saved vocabulary, after checking size, dim and the write position."""
        if not isinstance(state, Mapping) or any(k not in state for k in ("size", "dim", "ptr", "count",
                                                                             "vocabulary")):
            raise ValueError("memory bank state misses keys: its extra state must hold size, dim, ptr, "
                             "count and vocabulary")
        if state["size"] != self.size or state["dim"] != self.dim:
            raise ValueError(f"memory bank state has size={state['size']}, dim={state['dim']} but this "
                             f"bank has size={self.size}, dim={self.dim}")
        n, ptr = state["count"], state["ptr"]
        if not (isinstance(n, int) and 0 <= n <= self.size and isinstance(ptr, int) and 0 <= ptr < self.size
                and (n == self.size or ptr == n)):
            raise ValueError(f"memory bank state has an invalid position (count={n!r}, ptr={ptr!r})")
        return self._saved_vocabulary(state)

    def _saved_vocabulary(self, state) -> Vocabulary | None:
        if state["vocabulary"] is None:
            return self.vocabulary
        saved = Vocabulary(*(tuple(names) for names in state["vocabulary"]), name="memory-bank")
        if self.vocabulary is not None and saved != self.vocabulary:
            raise ValueError("memory bank state was saved with a different vocabulary")
        return self.vocabulary or saved

    # -- helpers -----------------------------------------------------------------------------
    def _layout(self, rows: int, vocabulary: Vocabulary | None = None) -> dict:
        """``{entry: (shape, dtype)}`` of ``rows`` rows (bit widths 0 without a vocabulary)."""
        vocabulary = vocabulary if vocabulary is not None else self.vocabulary
        c, a, r = vocabulary.sizes if vocabulary is not None else (0, 0, 0)
        wa, wr = (a + 31) // 32, (r + 31) // 32
        return {"img": ((rows, self.dim), torch.float32), "txt": ((rows, self.dim), torch.float32),
                "disease_bits": ((rows,), torch.int32), "adjective_bits": ((rows, c, wa), torch.int32),
                "direction_bits": ((rows, c, wr), torch.int32), "ids": ((rows,), torch.int64)}

    def _empty_buffers(self) -> dict:
        return {k: torch.zeros(shape, dtype=dtype) for k, (shape, dtype) in self._layout(0).items()}

    def _allocate(self, device: torch.device) -> None:
        if self.allocated:
            if self.device != device:
                self.to(device)
            return
        if self.vocabulary is None:
            raise ValueError("the memory bank needs a vocabulary (pass one, or push entities first)")
        for key, (shape, dtype) in self._layout(self.size).items():
            self._buffers[key] = torch.zeros(shape, dtype=dtype, device=device)

    def _check_batch(self, img, txt, entities, ids):
        for name, x in (("img", img), ("txt", txt)):
            check_tensor(name, x, floating=True)
            if x.dim() != 2 or x.shape[1] != self.dim:
                raise ValueError(f"{name} must have shape (rows, {self.dim}), got {tuple(x.shape)}")
        if txt.shape[0] != img.shape[0] or txt.device != img.device:
            raise ValueError(f"txt ({tuple(txt.shape)} on {txt.device}) must match img "
                             f"({tuple(img.shape)} on {img.device})")
        if not isinstance(entities, MetaEntities):
            raise TypeError(f"entities must be MetaEntities, got {type(entities).__name__}")
        if len(entities) != img.shape[0]:
            raise ValueError(f"entities has {len(entities)} samples but img has {img.shape[0]} rows")
        if self.vocabulary is None:
            self.vocabulary = entities.vocabulary
        elif entities.vocabulary != self.vocabulary:
            raise ValueError(f"entities use the vocabulary {entities.vocabulary.name!r}, not the bank's "
                             f"{self.vocabulary.name!r}")
        # ids may come from any device: they follow the embeddings
        ids = check_ids("ids", ids, img.shape[0], getattr(ids, "device", None))
        return img, txt, entities.to(img.device), ids.to(img.device)
