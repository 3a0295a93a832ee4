"""Add-Net (ADDNet-2D of the WildDeepfake paper): Xception whose entry flow is gated by a soft face-attention mask.

No code of it exists anywhere; this follows the figures of the WildDeepfake README. The mask A (B x 1 x H x W in
[0, 1]) arrives as the input's 4th channel (`Preprocess.face_mask`; drawn from the crop's landmarks by
`recce.data.faces.mask`) and is multiplied into the input, the stem's output and the outputs of blocks 1, 2 and 3,
each time average-pooled (adaptively, from the previous size) to the features' size; the middle and exit flows
are Xception's, unchanged, followed by global pooling and a two-way head.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from recce.data.faces.mask import MaskShape
from recce.detectors.base import Detector, DetectorConfigError, DetectorOutput, Preprocess
from recce.detectors.layers.xception import build_encoder, load_imagenet_weights
from recce.detectors.registry import register_detector

# The entry flow in the pieces the mask gates, and the rest of the network after the last gate.
ENTRY = {
    "stem": ("conv1", "bn1", "act1", "conv2", "bn2", "act2"),
    "block1": ("block1",),
    "block2": ("block2",),
    "block3": ("block3",),
}
REST = (*(f"block{i}" for i in range(4, 13)), "conv3", "bn3", "act3", "conv4", "bn4", "act4")
MASK_POINTS = ("input", *ENTRY)


@dataclass(frozen=True)
class AddNetConfig:
    num_classes: int = 2  # the figures' two-way classifier (softmax / cross-entropy)
    drop_rate: float = 0.2  # dropout before the head, as this project's Xception baseline (the figures show none)
    mask_points: tuple[str, ...] = MASK_POINTS  # where A multiplies in: the figures' five points; fewer for ablations

    def __post_init__(self) -> None:
        object.__setattr__(self, "mask_points", tuple(self.mask_points))
        unknown = [p for p in self.mask_points if p not in MASK_POINTS]
        if unknown:
            raise DetectorConfigError(f"model.mask_points: unknown {unknown[0]!r} (known: {', '.join(MASK_POINTS)})")


@dataclass(frozen=True)
class AddNetLoss:
    flooding: float = 0.04  # no recipe is published: the Xception baseline's (RECCE's flooded classification loss)


@register_detector
class AddNet(Detector):
    """Xception with the face-attention mask multiplied in at five points of the entry flow."""

    name = "addnet"
    Config = AddNetConfig
    Loss = AddNetLoss
    default_preprocess = Preprocess(input_size=299, face_mask=True)
    map_kinds = {"mask": "heatmap"}  # the face mask the features were gated with
    source = "re-implementation"
    paper = "Zi et al., WildDeepfake: A Challenging Real-World Dataset for Deepfake Detection (ACM MM 2020)"
    reference = (
        "the ADDNet-2D figures of the WildDeepfake repositories' README (no code was published); the face mask is "
        "this project's recipe from five landmarks (recce.data.faces.mask.MaskShape)"
    )
    choices = ("drop_rate", "flooding")

    def __init__(self, config: AddNetConfig | None = None, preprocess: Preprocess | None = None, **options):
        super().__init__(config, preprocess, **options)
        # the mask channel is part of the network's input, whatever preprocessing overrides were given
        self.preprocess = dataclasses.replace(self.preprocess, face_mask=True)
        self.encoder = build_encoder()
        self.dropout = nn.Dropout(self.config.drop_rate)
        self.fc = nn.Linear(2048, self.config.num_classes)

    @property
    def input_channels(self) -> int:
        return 4  # RGB and the face mask

    def load_pretrained(self, path: str) -> None:
        load_imagenet_weights(self.encoder, path)

    def forward(self, x: torch.Tensor) -> DetectorOutput:
        if x.dim() != 4 or x.shape[1] != 4:
            raise ValueError(f"addnet: expected B x 4 x H x W input (RGB and the face mask), got {tuple(x.shape)}")
        features, mask = x[:, :3], x[:, 3:]
        full_mask = mask
        gated = set(self.config.mask_points)
        if "input" in gated:
            features = features * mask
        for point, layers in ENTRY.items():
            for name in layers:
                features = getattr(self.encoder, name)(features)
            if point in gated:
                mask = F.adaptive_avg_pool2d(mask, features.shape[-2:])  # cascading: from the previous size
                features = features * mask
        for name in REST:
            features = getattr(self.encoder, name)(features)
        pooled = F.adaptive_avg_pool2d(features, 1).flatten(1)
        return DetectorOutput(self.fc(self.dropout(pooled)), {"mask": full_mask}, {})

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """Also the face mask's recipe, which the data pipeline draws and which is this project's choice."""
        return {
            **super().describe(),
            "face_mask_recipe": asdict(MaskShape()),
        }
