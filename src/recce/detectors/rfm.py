"""RFM: Representative Forgery Mining (Wang & Deng, CVPR 2021), as the authors' code computes it.

A plain Xception (two logits, softmax cross-entropy) trained on inputs whose most "representative" regions are
erased: the forgery attention map (FAM) is the absolute input gradient of (fake - real logit), taken in eval mode
and maximised over colour channels; the three highest-ranked regions of each image get random blocks of uniform
noise; the erased batch is then classified in train mode with a flooded cross-entropy. Every step, every image.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from recce.detectors.base import Detector, DetectorOutput, Preprocess
from recce.detectors.layers.xception import (
    XCEPTION_IMAGENET,
    build_encoder,
    cadene_to_timm,
    load_imagenet_weights,
    run_all,
)
from recce.detectors.registry import register_detector
from recce.weights import CheckpointError, load_strict, strip_prefix

DEEPFAKEBENCH_PREPROCESS = Preprocess(256, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # its rfm.yaml: 256 px faces, std 0.5


@dataclass(frozen=True)
class RFMConfig:
    num_classes: int = 2  # the authors' two logits and softmax; 1 (sigmoid) makes the FAM the gradient of the logit


@dataclass(frozen=True)
class RFMLoss:
    flooding: float = 0.04  # |CE - b| + b, the authors' value
    erase_blocks: int = 3  # regions erased per image
    erase_max: int = 120  # largest block side in pixels (the authors' eH = eW = 120 at 224 px)

    def __post_init__(self):
        if not isinstance(self.erase_blocks, int) or self.erase_blocks < 0:
            raise ValueError(f"erase_blocks must be a non-negative integer, got {self.erase_blocks!r}")
        if not isinstance(self.erase_max, int) or self.erase_max < 1:
            raise ValueError(f"erase_max must be a positive integer, got {self.erase_max!r}")


class Draws(Protocol):
    """A source of integer draws with inclusive bounds, such as `random.Random` (the authors' source)."""

    def randint(self, low: int, high: int) -> int: ...


class TorchDraws:
    """Draws from torch's global CPU generator, which the trainer saves and restores, so a resumed run is exact."""

    def randint(self, low: int, high: int) -> int:
        return int(torch.randint(low, high + 1, ()).item())


class Erasure(NamedTuple):
    images: torch.Tensor  # the erased input, B x 3 x H x W
    keep: torch.Tensor  # B x 1 x H x W bool, False where erased
    points: torch.Tensor  # B x blocks x 2: (row, column) each block was placed at; -1 where none was left
    boxes: torch.Tensor  # B x blocks x 4: (top, bottom, left, right), ends exclusive; -1 where none was placed


def draw_blocks(batch: int, blocks: int, block_max: int, draws: Draws) -> torch.Tensor:
    """B x blocks x (h, w, sh, sw) in the authors' order: per image, per block, h, w, then sh <= h, sw <= w."""
    values = []
    for _ in range(batch * blocks):
        h = draws.randint(1, block_max)
        w = draws.randint(1, block_max)
        values.append((h, w, draws.randint(1, h), draws.randint(1, w)))
    return torch.tensor(values, dtype=torch.long).reshape(batch, blocks, 4)


def erase_regions(
    images: torch.Tensor,
    fam: torch.Tensor,
    blocks: torch.Tensor,
    noise: torch.Tensor | None = None,
) -> Erasure:
    """Erase, per image, blocks around the highest-ranked FAM positions and fill them with noise in [-1, 1].

    `blocks` holds the draws of `draw_blocks`. Positions are walked in stable descending FAM order; a position is
    taken only if it is not yet erased, and the walk never goes back. Block j at (r, c) clears rows
    max(r - sh, 0) : min(r + h - sh, H) and columns alike, so when sh == h the chosen point itself stays visible
    (the reference's quirk, kept). The walk runs on the device for the whole batch: no host synchronisation.
    `noise` is U(0, 1) of the images' shape (default: `torch.rand_like`).
    """
    batch, _, height, width = fam.shape
    device = fam.device
    order = torch.argsort(fam.reshape(batch, -1).float(), dim=1, descending=True, stable=True)
    keep = torch.ones(batch, height * width, dtype=torch.bool, device=device)
    walked = torch.zeros(batch, 1, dtype=torch.long, device=device)  # how far each image's walk has gone
    steps = torch.arange(height * width, device=device)
    rows, cols = torch.arange(height, device=device), torch.arange(width, device=device)
    blocks = blocks.to(device)
    points, boxes = [], []
    for j in range(blocks.shape[1]):
        candidate = keep.gather(1, order) & (steps >= walked)
        index = candidate.to(torch.uint8).argmax(1, keepdim=True)  # the first candidate left on the walk
        found = candidate.gather(1, index)
        position = order.gather(1, index)
        r, c = position // width, position % width
        h, w, sh, sw = blocks[:, j].unbind(1)
        top, bottom = (r - sh[:, None]).clamp(min=0), (r + (h - sh)[:, None]).clamp(max=height)
        left, right = (c - sw[:, None]).clamp(min=0), (c + (w - sw)[:, None]).clamp(max=width)
        in_rows = (rows >= top) & (rows < bottom) & found
        in_cols = (cols >= left) & (cols < right)
        keep &= ~(in_rows[:, :, None] & in_cols[:, None, :]).reshape(batch, -1)
        walked = index + 1
        points.append(torch.where(found, torch.cat([r, c], 1), -1))
        boxes.append(torch.where(found, torch.cat([top, bottom, left, right], 1), -1))
    keep = keep.reshape(batch, 1, height, width)
    if noise is None:
        noise = torch.rand_like(images, memory_format=torch.contiguous_format)
    erased = torch.where(keep, images, noise * 2 - 1)
    return Erasure(erased, keep, torch.stack(points, 1), torch.stack(boxes, 1))


@register_detector
class RFM(Detector):
    """Xception whose training erases the regions its forgery attention map ranks highest."""

    name = "rfm"
    Config = RFMConfig
    Loss = RFMLoss
    default_preprocess = Preprocess(224, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), resize=256)
    map_kinds = {"attention": "heatmap"}
    source = "official code"
    paper = "Wang & Deng, Representative Forgery Mining for Fake Face Detection (CVPR 2021)"
    reference = "crywang/RFM @ f359de8 (train.py, utils.cal_fam); golden vectors match"
    pretrained_source = XCEPTION_IMAGENET
    choices = ("erase_max",)  # 120 is the authors' value at 224 px; the paper protocol scales it to 299 px

    def __init__(self, config: RFMConfig | None = None, preprocess: Preprocess | None = None, **options: Any):
        super().__init__(config, preprocess, **options)
        self.encoder = build_encoder()
        self.last_linear = nn.Linear(2048, self.config.num_classes)  # the Cadene head, on the pooled features
        self.draws: Draws = TorchDraws()  # where erasing draws come from; tests replay the reference's

    def load_pretrained(self, path: str) -> None:
        load_imagenet_weights(self.encoder, path)

    def forward(self, x: torch.Tensor) -> DetectorOutput:
        pooled = F.adaptive_avg_pool2d(run_all(self.encoder, x), 1).flatten(1)
        return DetectorOutput(self.last_linear(pooled), {}, {})

    def attention_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(eval-mode logits, FAM B x 1 x H x W in float32) without touching any parameter's .grad.

        Runs on this (raw) module in eval mode, then restores the previous mode. Only the input's gradient is
        computed (`torch.autograd.grad`), so DDP's gradient hooks never fire; under autocast it runs in the
        autocast dtype. Called under `torch.no_grad()` too (by `explain`), hence `enable_grad`.
        """
        was_training = self.training
        self.eval()
        try:
            with torch.enable_grad():
                inputs = x.detach().clone().requires_grad_(True)
                logits = self(inputs).logits
                target = logits[:, 1] - logits[:, 0] if logits.shape[1] == 2 else logits[:, 0]
                (gradient,) = torch.autograd.grad(target.sum(), inputs)
        finally:
            self.train(was_training)
        return logits.detach(), gradient.abs().amax(1, keepdim=True).float()

    def explain(self, x: torch.Tensor) -> DetectorOutput:
        logits, fam = self.attention_map(x)
        return DetectorOutput(logits, {"attention": fam}, {})

    def erase(self, images: torch.Tensor, cfg: RFMLoss) -> Erasure:
        """The RFM augmentation of one batch: FAM, draws from `self.draws`, erasing with noise."""
        _, fam = self.attention_map(images)
        blocks = draw_blocks(images.shape[0], cfg.erase_blocks, cfg.erase_max, self.draws)
        return erase_regions(images, fam, blocks)

    def training_step(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        forward: Callable[[torch.Tensor], DetectorOutput],
        cfg: RFMLoss,
    ) -> dict[str, torch.Tensor]:
        erased = self.erase(images, cfg).images
        return self.loss(forward(erased), erased, labels, cfg)

    @classmethod
    def from_reference(cls, state: Mapping[str, torch.Tensor], source: str, **options: Any) -> RFM:
        """The authors' bare state dicts (Cadene names, with or without `module.`) or DeepfakeBench's RFM weights.

        DeepfakeBench's `backbone.`-prefixed Xception is the same network (its unused `adjust_channel` is dropped);
        those weights come with its preprocessing (256 px, mean = std = 0.5). The head size is inferred.
        """
        state = strip_prefix(state)
        preprocess = options.pop("preprocess", None)
        if any(key.startswith("backbone.") for key in state):
            state = {
                key.removeprefix("backbone."): value
                for key, value in state.items()
                if key.startswith("backbone.") and not key.startswith("backbone.adjust_channel.")
            }
            preprocess = preprocess or DEEPFAKEBENCH_PREPROCESS
        head = state.get("last_linear.weight")
        if head is None:
            raise CheckpointError(f"{source}: no RFM classifier head (last_linear.weight) found; is this RFM's file?")
        asked = options.pop("num_classes", None)
        if asked is not None and asked != head.shape[0]:
            raise CheckpointError(f"{source}: the head has {head.shape[0]} outputs, but num_classes={asked} was asked")
        if head.shape[0] not in (1, 2):
            raise CheckpointError(f"{source}: the head has {head.shape[0]} outputs; RFM has 1 or 2")
        renamed = {
            key if key.startswith("last_linear.") else f"encoder.{key}": value
            for key, value in cadene_to_timm(state).items()
        }
        model = cls(RFMConfig(num_classes=head.shape[0], **options), preprocess)
        load_strict(model, renamed, source)
        return model.eval()
