"""Reconstruction-guided attention (paper Sec. 3.3): the reconstruction error highlights where to look."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GuidedAttention(nn.Module):
    """out = M * h(F) + Dropout(F), with M = sigmoid(conv1x1(ReLU(conv3x3(|x - x_hat|)))) on F's grid."""

    def __init__(self, depth: int = 728, drop_rate: float = 0.2):
        super().__init__()
        self.gated = nn.Sequential(
            nn.Conv2d(3, 3, 3, padding=1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(3, 1, 1, bias=False),
            nn.Sigmoid(),
        )
        self.h = nn.Sequential(nn.Conv2d(depth, depth, 1, bias=False), nn.BatchNorm2d(depth), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(drop_rate)

    def forward(
        self, x: torch.Tensor, reconstruction: torch.Tensor, features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (attended features, attention map M)."""
        residual = torch.abs(x - reconstruction)
        residual = F.interpolate(residual, size=features.shape[-2:], mode="bilinear", align_corners=True)
        attention = self.gated(residual)
        return attention * self.h(features) + self.dropout(features), attention
