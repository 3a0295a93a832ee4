"""Frequency-domain building blocks of the frequency detectors (F³-Net, Freq-SCL): DCT matrices, band masks, block DCT.

Everything is a matrix product so it runs batched on any device and exports to ONNX; the constant matrices are
computed in float64 and rounded once to float32, as the reference ports do.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def dct_matrix(size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The orthonormal DCT-II matrix D (X = D x Dᵀ): D[k, n] = s_k cos((n + ½)πk/N), s_0 = √(1/N), s_k = √(2/N)."""
    k = torch.arange(size, dtype=torch.float64)[:, None]
    n = torch.arange(size, dtype=torch.float64)[None, :]
    scale = torch.where(k == 0, math.sqrt(1.0 / size), math.sqrt(2.0 / size))
    return (scale * torch.cos((n + 0.5) * math.pi * k / size)).to(dtype)


def band_mask(size: int, start: float, end: float) -> torch.Tensor:
    """1 where start ≤ u + v ≤ end (both bounds inclusive, so a band edge diagonal belongs to both bands), else 0."""
    diagonal = torch.arange(size)[:, None] + torch.arange(size)[None, :]
    return ((diagonal >= start) & (diagonal <= end)).float()


def soft_band_filters(base: torch.Tensor, learnable: torch.Tensor) -> torch.Tensor:
    """base + (2σ(w) − 1): the fixed band plus a learnable correction in (−1, 1)."""
    return base + (2.0 * torch.sigmoid(learnable) - 1.0)


def block_dct(x: torch.Tensor, dct: torch.Tensor) -> torch.Tensor:
    """Per-channel non-overlapping block DCT, coefficients of equal frequency grouped as channels (JPEG-style).

    `dct` is the b×b DCT matrix (`dct_matrix(b)`). B×C×H×W (H, W multiples of b) → B×(C·b²)×(H/b)×(W/b); channel
    c·b² + u·b + v holds coefficient (u, v) of channel c.
    """
    block = dct.shape[0]
    b, c, h, w = x.shape
    if h % block or w % block:
        raise ValueError(f"block DCT needs sides that are multiples of {block}, got {h}×{w}")
    blocks = x.reshape(b, c, h // block, block, w // block, block).permute(0, 1, 2, 4, 3, 5)
    coefficients = dct @ blocks @ dct.t()  # b, c, h/block, w/block, u, v
    return coefficients.permute(0, 1, 4, 5, 2, 3).reshape(b, c * block * block, h // block, w // block)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad bottom and right so both sides are multiples of `multiple` (299 → 304 for 8×8 blocks)."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, -w % multiple, 0, -h % multiple))
