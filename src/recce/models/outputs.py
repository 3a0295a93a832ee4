"""What the detectors return: logits plus the auxiliary tensors RECCE's losses and visualisations need."""

from __future__ import annotations

from typing import NamedTuple

import torch


class RecceOutput(NamedTuple):
    """Forward result; a NamedTuple so DistributedDataParallel and torch.compile pass it through unchanged.

    `reconstruction` is None, `similarities` empty and `attention` None for the plain Xception baseline.
    """

    logits: torch.Tensor  # (B, num_classes)
    reconstruction: torch.Tensor | None = None  # (B, 3, H, W), the decoder output resized to the input size
    similarities: tuple[torch.Tensor, ...] = ()  # (B, B) matrices (1 + cos) / 2 at block4, decoder2, decoder4
    attention: torch.Tensor | None = None  # (B, 1, h, w) reconstruction-guided attention map on the block8 grid


def fake_probability(logits: torch.Tensor) -> torch.Tensor:
    """P(fake) per sample for a one-logit (sigmoid) or two-logit (softmax) head."""
    if logits.shape[-1] == 1:
        return torch.sigmoid(logits.float())[..., 0]
    return torch.softmax(logits.float(), dim=-1)[..., 1]
