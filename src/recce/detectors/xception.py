"""The plain Xception baseline of the paper's tables, trained by the same engine and recipe as RECCE."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from recce.detectors.base import Detector, DetectorOutput
from recce.detectors.layers.xception import XCEPTION_IMAGENET, build_encoder, load_imagenet_weights, run_all
from recce.detectors.registry import register_detector


@dataclass(frozen=True)
class XceptionConfig:
    num_classes: int = 1  # 1: sigmoid / BCE as RECCE; 2: softmax / CE
    drop_rate: float = 0.2  # dropout before the linear head

    def __post_init__(self):
        if not 0 <= self.drop_rate < 1:
            raise ValueError(f"drop_rate must be in [0, 1), got {self.drop_rate!r}")


@dataclass(frozen=True)
class XceptionLoss:
    flooding: float = 0.04  # RECCE's flooded classification loss, the baseline's only term


@register_detector
class Xception(Detector):
    """Xception with RECCE's head (global average pooling, dropout, linear)."""

    name = "xception"
    Config = XceptionConfig
    Loss = XceptionLoss
    source = "official code"
    paper = "Chollet, Xception (CVPR 2017); the baseline of RECCE's tables (Cao et al., CVPR 2022)"
    pretrained_source = XCEPTION_IMAGENET
    reference = "RECCE's training recipe with timm legacy_xception; the backbone RECCE is built on"

    def __init__(self, config: XceptionConfig | None = None, preprocess=None, **options):
        super().__init__(config, preprocess, **options)
        self.encoder = build_encoder()
        self.dropout = nn.Dropout(self.config.drop_rate)
        self.fc = nn.Linear(2048, self.config.num_classes)

    def load_pretrained(self, path: str) -> None:
        load_imagenet_weights(self.encoder, path)

    def forward(self, x: torch.Tensor) -> DetectorOutput:
        pooled = F.adaptive_avg_pool2d(run_all(self.encoder, x), 1).flatten(1)
        return DetectorOutput(self.fc(self.dropout(pooled)), {}, {})
