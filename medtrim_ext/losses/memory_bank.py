"""MemoryBank: a FIFO ring of past embeddings and meta-entities, to mine among more than one batch."""

from __future__ import annotations

import torch

from ..entities.meta_entities import MetaEntities
from ..utils.checks import check_ids, check_int, check_tensor
from ..entities.vocabulary import Vocabulary

_STATE_KEYS = ("size", "dim", "ptr", "count", "vocabulary", "img", "txt", "disease_bits",
               "adjective_bits", "direction_bits", "ids")


class MemoryBank:
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
    - ``state_dict()`` / ``load_state_dict()`` (CPU tensors and plain values) save and restore
      the entries and the write position: a resumed run gets the same candidates.
    """

    def __init__(self, size: int, dim: int, vocabulary: Vocabulary | None = None):
        check_int("size", size)
        check_int("dim", dim)
        if vocabulary is not None and not isinstance(vocabulary, Vocabulary):
            raise TypeError(f"vocabulary must be a Vocabulary, got {type(vocabulary).__name__}")
        self.size, self.dim = size, dim
        self.vocabulary = vocabulary
        self._ptr = 0    # next slot to write
        self._count = 0  # valid entries (slots [0, count) until the ring is full)
        self._buf: dict[str, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return f"MemoryBank(size={self.size}, dim={self.dim}, entries={self._count}, device={self.device})"

    @property
    def device(self) -> torch.device | None:
        """Where the entries live (``None`` before the first push)."""
        return None if self._buf is None else self._buf["img"].device

    def reset(self) -> None:
        """Forget all entries (keeps the storage)."""
        self._ptr = self._count = 0

    def to(self, device: torch.device | str) -> "MemoryBank":
        """Move the entries to ``device`` (in place; returns self)."""
        if self._buf is not None:
            self._buf = {k: v.to(device) for k, v in self._buf.items()}
        return self

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
        buf = self._buf
        with torch.no_grad():
            buf["img"][slots] = img.detach().float()
            buf["txt"][slots] = txt.detach().float()
            buf["disease_bits"][slots] = entities.disease_bits
            buf["adjective_bits"][slots] = entities.adjective_bits
            buf["direction_bits"][slots] = entities.direction_bits
            buf["ids"][slots] = ids
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
        n, buf = self._count, self._buf
        # pushed entities were checked when built, loaded ones in load_state_dict
        bank_ents = MetaEntities._derived(buf["disease_bits"][:n], buf["adjective_bits"][:n],
                                          buf["direction_bits"][:n], self.vocabulary)
        return (torch.cat([img, buf["img"][:n].to(dtype)]), torch.cat([txt, buf["txt"][:n].to(dtype)]),
                MetaEntities.cat([entities, bank_ents]), torch.cat([ids, buf["ids"][:n]]))

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The entries (CPU copies) and the write position."""
        n = self._count
        state = {"size": self.size, "dim": self.dim, "ptr": self._ptr, "count": n,
                 "vocabulary": None if self.vocabulary is None else
                 [list(self.vocabulary.diseases), list(self.vocabulary.adjectives),
                  list(self.vocabulary.directions)]}
        for key in ("img", "txt", "disease_bits", "adjective_bits", "direction_bits", "ids"):
            state[key] = None if self._buf is None else self._buf[key][:n].detach().cpu().clone()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned (size and dim must match; the entries are
        moved to the bank's device, or stay on the CPU until the next use)."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict, got {type(state).__name__}")
        missing = [k for k in _STATE_KEYS if k not in state]
        if missing:
            raise ValueError(f"memory bank state misses keys {missing}")
        if state["size"] != self.size or state["dim"] != self.dim:
            raise ValueError(f"memory bank state has size={state['size']}, dim={state['dim']} but this "
                             f"bank has size={self.size}, dim={self.dim}")
        n, ptr = state["count"], state["ptr"]
        if not (isinstance(n, int) and 0 <= n <= self.size and isinstance(ptr, int) and 0 <= ptr < self.size
                and (n == self.size or ptr == n)):
            raise ValueError(f"memory bank state has an invalid position (count={n!r}, ptr={ptr!r})")
        vocab = self.vocabulary
        if state["vocabulary"] is not None:
            saved = Vocabulary(*(tuple(names) for names in state["vocabulary"]), name="memory-bank")
            if vocab is not None and saved != vocab:
                raise ValueError("memory bank state was saved with a different vocabulary")
            vocab = vocab or saved
        device = self.device
        self.vocabulary, self._ptr, self._count, self._buf = vocab, ptr, n, None
        if n == 0 and state["img"] is None:
            return
        self._allocate(torch.device("cpu"))
        for key in ("img", "txt", "disease_bits", "adjective_bits", "direction_bits", "ids"):
            value = state[key]
            if not isinstance(value, torch.Tensor) or value.shape[0] != n or \
                    value.shape[1:] != self._buf[key].shape[1:] or value.dtype != self._buf[key].dtype:
                raise ValueError(f"memory bank state entry {key!r} does not fit the bank "
                                 f"(expected {n} rows of {tuple(self._buf[key].shape[1:])} "
                                 f"{self._buf[key].dtype})")
            self._buf[key][:n] = value
        try:  # bits beyond the vocabulary's width would score differently from the reference
            MetaEntities(*(self._buf[k][:n] for k in ("disease_bits", "adjective_bits", "direction_bits")),
                         self.vocabulary)
        except ValueError as exc:
            self._buf, self._count, self._ptr = None, 0, 0
            raise ValueError(f"memory bank state: {exc}") from None
        if device is not None:
            self.to(device)

    # -- helpers -----------------------------------------------------------------------------
    def _allocate(self, device: torch.device) -> None:
        if self._buf is not None:
            if self.device != device:
                self.to(device)
            return
        if self.vocabulary is None:
            raise ValueError("the memory bank needs a vocabulary (pass one, or push entities first)")
        c, a, r = self.vocabulary.sizes
        wa, wr = (a + 31) // 32, (r + 31) // 32
        s = self.size
        self._buf = {
            "img": torch.zeros(s, self.dim, device=device),
            "txt": torch.zeros(s, self.dim, device=device),
            "disease_bits": torch.zeros(s, dtype=torch.int32, device=device),
            "adjective_bits": torch.zeros(s, c, wa, dtype=torch.int32, device=device),
            "direction_bits": torch.zeros(s, c, wr, dtype=torch.int32, device=device),
            "ids": torch.zeros(s, dtype=torch.int64, device=device),
        }

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
