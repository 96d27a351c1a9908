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
    # bit 31 weighs -2^31: the sum of distinct weights is then the word's two's-complement value,
    # with no int32 overflow on the way
    weights = torch.tensor([1 << b for b in range(WORD_BITS - 1)] + [-(1 << 31)], dtype=torch.int32,
                           device=mask.device)
    out = torch.empty(*mask.shape[:-1], words, dtype=torch.int32, device=mask.device)
    for w in range(words):  # one word at a time keeps the temporary at 4 bytes per flag of a word
        chunk = mask[..., w * WORD_BITS:(w + 1) * WORD_BITS].to(torch.int32)
        out[..., w] = (chunk * weights[: chunk.shape[-1]]).sum(-1, dtype=torch.int32)
    return out


def unpack_bits(words: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: int32 words ``(..., W)`` -> bool ``(..., k)``."""
    shifts = torch.arange(WORD_BITS, device=words.device)
    bits = torch.bitwise_right_shift(words.to(torch.int64).unsqueeze(-1), shifts) & 1
    return bits.flatten(-2)[..., :k].bool()
