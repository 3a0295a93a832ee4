"""RECCE: end-to-end reconstruction-classification learning (Cao et al., CVPR 2022).

The wiring is the official implementation's: decoder from block4 (with dropout before it), graph reasoning on
block7 with decoder stages 2 and 4 (residual add), block8, reconstruction-guided attention against the clean input,
then the Xception exit flow and a linear head. Nothing is kept on the module between calls.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.models.xception import Block, SeparableConv2d
from torch import nn

from recce.models.attention import GuidedAttention
from recce.models.graph_reasoning import AGGREGATIONS, GraphReasoning
from recce.models.outputs import RecceOutput
from recce.models.xception import build_encoder, run_stage


@dataclass(frozen=True)
class RecceConfig:
    """Model hyper-parameters; defaults are the paper's. Stored in checkpoints so they rebuild the right model."""

    num_classes: int = 1  # 1: sigmoid / BCE (official); 2: softmax / CE (DeepfakeBench)
    drop_rate: float = 0.2
    aggregation: str = "graph"  # graph | sum | concat | nonlocal (seed Table 2)
    multi_scale: bool = True  # False: graph reasoning with decoder2 only (seed Table 2 (d))
    input_noise_std: float = 1e-6  # official training-time input noise, applied to half the batch
    looped_graph: bool = False  # the official per-position loop: a slow baseline, numerically the same function

    def __post_init__(self):
        if self.num_classes not in (1, 2):
            raise ValueError(f"num_classes must be 1 (sigmoid) or 2 (softmax), got {self.num_classes}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")


def _upsample_stage(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"),
        SeparableConv2d(cin, cout, 3, stride=1, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def similarity_matrix(features: torch.Tensor) -> torch.Tensor:
    """S_ij = (1 + cos(g_i, g_j)) / 2 of the global-average-pooled features, in float32."""
    pooled = F.normalize(F.adaptive_avg_pool2d(features, 1).flatten(1).float(), p=2, dim=1)
    return (1 + pooled @ pooled.t()) / 2


class Recce(nn.Module):
    """RECCE detector. `forward(x)` takes images normalised to [-1, 1] and returns a `RecceOutput`."""

    architecture = "recce"

    def __init__(
        self,
        num_classes: int = 1,
        drop_rate: float = 0.2,
        pretrained: str | os.PathLike | None = None,
        *,
        aggregation: str = "graph",
        multi_scale: bool = True,
        input_noise_std: float = 1e-6,
        looped_graph: bool = False,
    ):
        super().__init__()
        self.config = RecceConfig(num_classes, drop_rate, aggregation, multi_scale, input_noise_std, looped_graph)
        self.encoder = build_encoder(pretrained)
        self.dropout = nn.Dropout(drop_rate)
        self.decoder1 = _upsample_stage(728, 256)
        self.decoder2 = Block(256, 256, 3, 1)
        self.decoder3 = _upsample_stage(256, 128)
        self.decoder4 = Block(128, 128, 3, 1)
        self.decoder5 = _upsample_stage(128, 64)
        self.decoder6 = nn.Sequential(nn.Conv2d(64, 3, 1, bias=False), nn.Tanh())
        self.reasoning = GraphReasoning(
            728,
            256,
            (256, 128),
            (2, 4),
            drop_rate,
            aggregation=aggregation,
            multi_scale=multi_scale,
            looped=looped_graph,
        )
        self.attention = GuidedAttention(728, drop_rate)
        self.fc = nn.Linear(2048, num_classes)

    def _noised(self, x: torch.Tensor) -> torch.Tensor:
        # Official: each sample, with probability 0.5, gets N(0, std^2) noise, then a clip to [-1, 1]; drawn on device.
        std = self.config.input_noise_std
        if not self.training or std <= 0:
            return x
        selected = (torch.rand(x.shape[0], 1, 1, 1, device=x.device) < 0.5).to(x.dtype)
        return torch.clamp(x + selected * torch.randn_like(x) * std, -1, 1)

    def forward(self, x: torch.Tensor) -> RecceOutput:
        e4 = run_stage(self.encoder, 0, self._noised(x))
        d1 = self.decoder1(self.dropout(e4))
        d2 = self.decoder2(d1)
        d3 = self.decoder3(d2)
        d4 = self.decoder4(d3)
        d6 = self.decoder6(self.decoder5(d4))
        reconstruction = F.interpolate(d6, size=x.shape[-2:], mode="bilinear", align_corners=True)

        e7 = run_stage(self.encoder, 1, e4)
        e7 = e7 + self.reasoning(e7, d2, d4)
        e8 = run_stage(self.encoder, 2, e7)
        attended, attention = self.attention(x, reconstruction, e8)
        features = run_stage(self.encoder, 3, attended)
        pooled = F.adaptive_avg_pool2d(features, 1).flatten(1)
        logits = self.fc(self.dropout(pooled))
        similarities = (similarity_matrix(e4), similarity_matrix(d2), similarity_matrix(d4))
        return RecceOutput(logits, reconstruction, similarities, attention)
