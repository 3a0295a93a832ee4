"""The Xception encoder RECCE is built on (timm's `legacy_xception`), and the plain Xception baseline."""

from __future__ import annotations

import os
from dataclasses import dataclass

import timm
import torch
import torch.nn.functional as F
from torch import nn

from recce.models.outputs import RecceOutput
from recce.weights import CheckpointError, mismatch, read_state_dict, strip_prefix

ENCODER_STAGES = (
    ("conv1", "bn1", "act1", "conv2", "bn2", "act2", "block1", "block2", "block3", "block4"),
    ("block5", "block6", "block7"),
    ("block8",),
    ("block9", "block10", "block11", "block12", "conv3", "bn3", "act3", "conv4", "bn4", "act4"),
)


def build_encoder(pretrained: str | os.PathLike | None = None) -> nn.Module:
    """timm `legacy_xception` without its 1000-way head, optionally with ImageNet weights from a local file.

    The head is left out (the official model builds, optimises and saves it without using it), which also lets
    DistributedDataParallel run without `find_unused_parameters`.
    """
    encoder = timm.create_model("legacy_xception", pretrained=False, num_classes=0)
    if pretrained is not None:
        load_imagenet_weights(encoder, pretrained)
    return encoder


def load_imagenet_weights(encoder: nn.Module, path: str | os.PathLike) -> None:
    """Load `xception-43020ad28.pth` (timm / Cadene ImageNet Xception) into the encoder, dropping the 1000-way head."""
    state = strip_prefix(read_state_dict(path))
    cleaned = {}
    for key, value in state.items():
        if key.startswith(("fc.", "last_linear.")):
            continue
        if key.endswith("pointwise.weight") and value.dim() == 2:  # some ports store 1x1 convs as matrices
            value = value[:, :, None, None]
        cleaned[key] = value
    problem = mismatch(encoder.state_dict(), cleaned)
    if problem:
        raise CheckpointError(f"{path}: not ImageNet Xception weights: {problem}")
    encoder.load_state_dict(cleaned)


def run_stage(encoder: nn.Module, stage: int, x: torch.Tensor) -> torch.Tensor:
    """Run one of the encoder stages RECCE taps into (entry flow + block4, block5-7, block8, exit flow)."""
    for name in ENCODER_STAGES[stage]:
        x = getattr(encoder, name)(x)
    return x


@dataclass(frozen=True)
class XceptionConfig:
    """The Xception baseline of the paper's tables, trained by the same engine as RECCE."""

    num_classes: int = 1
    drop_rate: float = 0.2


class Xception(nn.Module):
    """Plain Xception classifier with RECCE's head (GAP, dropout, linear), returning a `RecceOutput`."""

    architecture = "xception"

    def __init__(self, num_classes: int = 1, drop_rate: float = 0.2, pretrained: str | os.PathLike | None = None):
        super().__init__()
        if num_classes not in (1, 2):
            raise ValueError(f"num_classes must be 1 (sigmoid) or 2 (softmax), got {num_classes}")
        self.config = XceptionConfig(num_classes=num_classes, drop_rate=drop_rate)
        self.encoder = build_encoder(pretrained)
        self.dropout = nn.Dropout(drop_rate)
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x: torch.Tensor) -> RecceOutput:
        features = x
        for stage in range(len(ENCODER_STAGES)):
            features = run_stage(self.encoder, stage, features)
        pooled = F.adaptive_avg_pool2d(features, 1).flatten(1)
        return RecceOutput(logits=self.fc(self.dropout(pooled)))
