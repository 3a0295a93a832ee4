"""RECCE: end-to-end reconstruction-classification learning (Cao et al., CVPR 2022).

The wiring is the official implementation's: decoder from block4 (with dropout before it), graph reasoning on
block7 with decoder stages 2 and 4 (residual add), block8, reconstruction-guided attention against the clean input,
then the Xception exit flow and a linear head. Nothing is kept on the module between calls.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.models.xception import Block, SeparableConv2d
from torch import nn

from recce.detectors.base import Detector, DetectorOutput
from recce.detectors.layers.graph_reasoning import AGGREGATIONS, GraphReasoning
from recce.detectors.layers.guided_attention import GuidedAttention
from recce.detectors.layers.xception import XCEPTION_IMAGENET, build_encoder, load_imagenet_weights, run_stage
from recce.detectors.registry import register_detector
from recce.losses import RecceLoss
from recce.weights import CheckpointError, load_strict, strip_prefix


@dataclass(frozen=True)
class RecceConfig:
    """Model hyper-parameters; defaults are the paper's. Stored in checkpoints so they rebuild the right model."""

    num_classes: int = 1  # 1: sigmoid / BCE (official); 2: softmax / CE (DeepfakeBench)
    drop_rate: float = 0.2  # dropout before the decoder, in graph reasoning, guided attention and the head
    aggregation: str = "graph"  # graph | sum | concat | nonlocal (seed Table 2)
    multi_scale: bool = True  # False: graph reasoning with decoder2 only (seed Table 2 (d))
    input_noise_std: float = 1e-6  # official training-time input noise, applied to half the batch
    looped_graph: bool = False  # the official per-position loop: a slow baseline, numerically the same function

    def __post_init__(self):
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {self.aggregation!r}")
        if not 0 <= self.drop_rate < 1:
            raise ValueError(f"drop_rate must be in [0, 1), got {self.drop_rate!r}")


class RecceOutput(DetectorOutput):
    """RECCE's output with its parts by name (the maps and aux entries of the generic output)."""

    __slots__ = ()

    @property
    def reconstruction(self) -> torch.Tensor:
        return self.maps["reconstruction"]

    @property
    def attention(self) -> torch.Tensor:
        return self.maps["attention"]

    @property
    def similarities(self) -> tuple[torch.Tensor, ...]:
        return self.aux["similarities"]


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


@register_detector
class Recce(Detector):
    """RECCE. `forward(x)` takes images normalised to [-1, 1] and returns a `RecceOutput`."""

    name = "recce"
    Config = RecceConfig
    Loss = RecceLoss
    map_kinds = {"reconstruction": "image", "difference": "heatmap", "attention": "heatmap"}
    source = "official code"
    paper = "Cao et al., End-to-End Reconstruction-Classification Learning for Face Forgery Detection (CVPR 2022)"
    pretrained_source = XCEPTION_IMAGENET
    reference = "the authors' code (VISION-SJTU/RECCE); golden vectors match within 1e-4"

    def __init__(self, config: RecceConfig | None = None, preprocess=None, **options):
        super().__init__(config, preprocess, **options)
        c = self.config
        self.encoder = build_encoder()
        self.dropout = nn.Dropout(c.drop_rate)
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
            c.drop_rate,
            aggregation=c.aggregation,
            multi_scale=c.multi_scale,
            looped=c.looped_graph,
        )
        self.attention = GuidedAttention(728, c.drop_rate)
        self.fc = nn.Linear(2048, c.num_classes)

    def load_pretrained(self, path: str) -> None:
        load_imagenet_weights(self.encoder, path)

    def loss(self, output: DetectorOutput, images: torch.Tensor, labels: torch.Tensor, cfg: RecceLoss):
        return cfg(output, images, labels)

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
        difference = torch.abs(x - reconstruction.to(x.dtype)).mean(1, keepdim=True)
        maps = {"reconstruction": reconstruction, "difference": difference, "attention": attention}
        return RecceOutput(logits, maps, {"similarities": similarities})

    @classmethod
    def from_reference(cls, state: Mapping[str, torch.Tensor], source: str, **options) -> Recce:
        """Official RECCE weights (under "model" or bare, with or without `module.`) or DeepfakeBench's.

        DeepfakeBench's `model.`-prefixed keys are accepted (its unused `backbone.*` is ignored), and so is the timm
        1000-way head `encoder.fc.*` the official model saves. The head size is inferred.
        """
        state = strip_prefix(state)
        if any(k.startswith("model.") for k in state):
            state = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
        state = {k: v for k, v in state.items() if not k.startswith("encoder.fc.")}
        head = state.get("fc.weight")
        if head is None:
            raise CheckpointError(f"{source}: no RECCE classifier head (fc.weight) found; is this a RECCE checkpoint?")
        inferred = head.shape[0]
        asked = options.pop("num_classes", None)
        if asked is not None and asked != inferred:
            raise CheckpointError(f"{source}: the head has {inferred} outputs, but num_classes={asked} was asked")
        if inferred not in (1, 2):
            raise CheckpointError(f"{source}: the head has {inferred} outputs; RECCE checkpoints have 1 or 2")
        model = cls(num_classes=inferred, **options)
        load_strict(model, state, source)
        return model.eval()
