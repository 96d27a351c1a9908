"""Packing boolean masks into 32-bit words (the kernels' layout) and back."""

from __future__ import annotations

import torch

WORD_BITS = 32


def num_words(bits: int) -> int:
    """Words needed for ``bits`` flags (at least one, so every layout has a word to read)."""
    return max(1, -(-bits // WORD_BITS))


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Pack a bool tensor ``(..., K)`` into int32 words ``(..., ceil(K / 32))``; bit k of word w is
    flag ``32 * w + k``."""
    k = mask.shape[-1]
    words = num_words(k)
    padded = torch.zeros(*mask.shape[:-1], words * WORD_BITS, dtype=torch.int64, device=mask.device)
    padded[..., :k] = mask.to(torch.int64)
    weights = torch.bitwise_left_shift(torch.ones(WORD_BITS, dtype=torch.int64, device=mask.device),
                                       torch.arange(WORD_BITS, device=mask.device))
    values = (padded.view(*mask.shape[:-1], words, WORD_BITS) * weights).sum(-1)  # in [0, 2^32)
    values = values - (values >= 2**31).to(torch.int64) * 2**32  # two's complement, explicitly
    return values.to(torch.int32)


def unpack_bits(words: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: int32 words ``(..., W)`` -> bool ``(..., k)``."""
    shifts = torch.arange(WORD_BITS, device=words.device)
    bits = torch.bitwise_right_shift(words.to(torch.int64).unsqueeze(-1), shifts) & 1
    return bits.flatten(-2)[..., :k].bool()
