"""RetinaFace (MobileNet-0.25 and ResNet-50), the detector the RECCE authors cropped faces with.

Module names follow the public biubug6/Pytorch_Retinaface checkpoints (`mobilenet0.25_Final.pth`,
`Resnet50_Final.pth`) key for key, so those files load unchanged; priors, decoding and post-processing follow
that project's detect.py (see shared/spec/retinaface.md).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models._utils import IntermediateLayerGetter

from recce.data.faces.base import Face, check_frame
from recce.engine.runtime import resolve_device
from recce.weights import CheckpointError, mismatch, read_state_dict, strip_prefix

VARIANTS = ("mobilenet0.25", "resnet50")
MIN_SIZES = ((16, 32), (64, 128), (256, 512))
STRIDES = (8, 16, 32)
VARIANCES = (0.1, 0.2)
BGR_MEAN = (104.0, 117.0, 123.0)
ANCHORS_PER_CELL = 2

PREFILTER_SCORE = 0.02
TOP_K = 5000
NMS_IOU = 0.4
KEEP_TOP_K = 750

_SETTINGS = {
    # variant: backbone channels fed to the FPN, FPN/SSH width, LeakyReLU slope in FPN and SSH
    "mobilenet0.25": ((64, 128, 256), 64, 0.1),
    "resnet50": ((512, 1024, 2048), 256, 0.0),
}
_VARIANT_MARKERS = {"body.stage1.0.0.weight": "mobilenet0.25", "body.layer4.0.conv1.weight": "resnet50"}


def _conv_bn(
    in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1, slope: float | None = None
) -> list[nn.Module]:
    """Bias-free conv -> BN (-> LeakyReLU when `slope` is given): every layer outside the heads."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    ]
    if slope is not None:
        layers.append(nn.LeakyReLU(slope, inplace=True))
    return layers


def _depthwise_separable(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        *_conv_bn(in_ch, in_ch, 3, stride, groups=in_ch, slope=0.1),
        *_conv_bn(in_ch, out_ch, 1, slope=0.1),
    )


class MobileNetV1Body(nn.Module):
    """MobileNetV1 x0.25 without its classifier; returns the stride-8/16/32 features (64/128/256 channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(
            nn.Sequential(*_conv_bn(3, 8, stride=2, slope=0.1)),
            _depthwise_separable(8, 16, 1),
            _depthwise_separable(16, 32, 2),
            _depthwise_separable(32, 32, 1),
            _depthwise_separable(32, 64, 2),
            _depthwise_separable(64, 64, 1),
        )
        self.stage2 = nn.Sequential(
            _depthwise_separable(64, 128, 2), *(_depthwise_separable(128, 128, 1) for _ in range(5))
        )
        self.stage3 = nn.Sequential(_depthwise_separable(128, 256, 2), _depthwise_separable(256, 256, 1))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        c1 = self.stage1(x)
        c2 = self.stage2(c1)
        return {"0": c1, "1": c2, "2": self.stage3(c2)}


class FPN(nn.Module):
    """Three-level top-down feature pyramid with nearest upsampling and a 3x3 merge after each addition."""

    def __init__(self, in_channels: Sequence[int], width: int, slope: float) -> None:
        super().__init__()
        self.output1 = nn.Sequential(*_conv_bn(in_channels[0], width, 1, slope=slope))
        self.output2 = nn.Sequential(*_conv_bn(in_channels[1], width, 1, slope=slope))
        self.output3 = nn.Sequential(*_conv_bn(in_channels[2], width, 1, slope=slope))
        self.merge1 = nn.Sequential(*_conv_bn(width, width, slope=slope))
        self.merge2 = nn.Sequential(*_conv_bn(width, width, slope=slope))

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        out1 = self.output1(features[0])
        out2 = self.output2(features[1])
        out3 = self.output3(features[2])
        out2 = self.merge2(out2 + F.interpolate(out3, size=out2.shape[-2:], mode="nearest"))
        out1 = self.merge1(out1 + F.interpolate(out2, size=out1.shape[-2:], mode="nearest"))
        return [out1, out2, out3]


class SSH(nn.Module):
    """Single-stage context module: 3x3, stacked 2x(3x3) and 3x(3x3) branches concatenated, then ReLU."""

    def __init__(self, width: int, slope: float) -> None:
        super().__init__()
        quarter = width // 4
        self.conv3X3 = nn.Sequential(*_conv_bn(width, width // 2))
        self.conv5X5_1 = nn.Sequential(*_conv_bn(width, quarter, slope=slope))
        self.conv5X5_2 = nn.Sequential(*_conv_bn(quarter, quarter))
        self.conv7X7_2 = nn.Sequential(*_conv_bn(quarter, quarter, slope=slope))
        self.conv7x7_3 = nn.Sequential(*_conv_bn(quarter, quarter))

    def forward(self, x: Tensor) -> Tensor:
        branch5_in = self.conv5X5_1(x)
        branch7_in = self.conv7X7_2(branch5_in)
        out = torch.cat([self.conv3X3(x), self.conv5X5_2(branch5_in), self.conv7x7_3(branch7_in)], dim=1)
        return F.relu(out)


class _Head(nn.Module):
    """1x1 conv per level; reshapes (N, A*C, H, W) to (N, H*W*A, C) in the reference's anchor order."""

    def __init__(self, width: int, values_per_anchor: int) -> None:
        super().__init__()
        self.values_per_anchor = values_per_anchor
        self.conv1x1 = nn.Conv2d(width, ANCHORS_PER_CELL * values_per_anchor, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv1x1(x).permute(0, 2, 3, 1).reshape(x.shape[0], -1, self.values_per_anchor)


class RetinaFace(nn.Module):
    """RetinaFace network; forward returns (loc, conf_logits, landm) for BGR-minus-mean CHW input.

    Unlike the reference, which applies the softmax only in eval mode, `conf` is always the raw logits
    (N, P, 2); softmax(conf)[..., 1] is the face probability. loc is (N, P, 4), landm (N, P, 10), with P
    priors ordered as `prior_boxes` makes them.
    """

    def __init__(self, variant: str = "mobilenet0.25") -> None:
        super().__init__()
        if variant not in _SETTINGS:
            raise ValueError(f"unknown RetinaFace variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        self.variant = variant
        in_channels, width, slope = _SETTINGS[variant]
        if variant == "resnet50":
            backbone = torchvision.models.resnet50(weights=None)
            self.body = IntermediateLayerGetter(backbone, {"layer2": "0", "layer3": "1", "layer4": "2"})
        else:
            self.body = MobileNetV1Body()
        self.fpn = FPN(in_channels, width, slope)
        self.ssh1 = SSH(width, slope)
        self.ssh2 = SSH(width, slope)
        self.ssh3 = SSH(width, slope)
        self.ClassHead = nn.ModuleList(_Head(width, 2) for _ in STRIDES)
        self.BboxHead = nn.ModuleList(_Head(width, 4) for _ in STRIDES)
        self.LandmarkHead = nn.ModuleList(_Head(width, 10) for _ in STRIDES)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        pyramid = self.fpn(list(self.body(x).values()))
        levels = [ssh(level) for ssh, level in zip((self.ssh1, self.ssh2, self.ssh3), pyramid, strict=True)]
        loc = torch.cat([head(level) for head, level in zip(self.BboxHead, levels, strict=True)], dim=1)
        conf = torch.cat([head(level) for head, level in zip(self.ClassHead, levels, strict=True)], dim=1)
        landm = torch.cat([head(level) for head, level in zip(self.LandmarkHead, levels, strict=True)], dim=1)
        return loc, conf, landm


def prior_boxes(height: int, width: int) -> Tensor:
    """Anchors (P, 4) as normalised (cx, cy, w, h): per level, row-major cells, each cell's two min sizes."""
    per_level = []
    for stride, sizes in zip(STRIDES, MIN_SIZES, strict=True):
        rows, cols = math.ceil(height / stride), math.ceil(width / stride)
        cy = (torch.arange(rows, dtype=torch.float32) + 0.5) * stride / height
        cx = (torch.arange(cols, dtype=torch.float32) + 0.5) * stride / width
        grid_y, grid_x = torch.meshgrid(cy, cx, indexing="ij")
        centres = torch.stack([grid_x, grid_y], dim=-1).reshape(-1, 1, 2).expand(-1, len(sizes), 2)
        wh = torch.tensor([[size / width, size / height] for size in sizes]).expand(rows * cols, -1, -1)
        per_level.append(torch.cat([centres, wh], dim=-1).reshape(-1, 4))
    return torch.cat(per_level)


def decode_boxes(loc: Tensor, priors: Tensor) -> Tensor:
    """Regression offsets (..., P, 4) against priors (P, 4) to normalised corners (x1, y1, x2, y2)."""
    centres = priors[..., :2] + loc[..., :2] * VARIANCES[0] * priors[..., 2:]
    sizes = priors[..., 2:] * torch.exp(loc[..., 2:] * VARIANCES[1])
    return torch.cat([centres - sizes / 2, centres + sizes / 2], dim=-1)


def decode_landmarks(landm: Tensor, priors: Tensor) -> Tensor:
    """Landmark offsets (..., P, 10) against priors (P, 4) to five normalised (x, y) points, flattened."""
    points = landm.unflatten(-1, (5, 2))
    centres = priors[..., None, :2]
    return (centres + points * VARIANCES[0] * priors[..., None, 2:]).flatten(-2)


def infer_variant(keys: Sequence[str] | Mapping[str, object]) -> str | None:
    """The variant a state dict (without `module.` prefix) was saved from, or None if it is no RetinaFace."""
    return next((variant for marker, variant in _VARIANT_MARKERS.items() if marker in keys), None)


def load_retinaface(
    path_or_state_dict: str | os.PathLike | Mapping[str, Tensor], device: str | torch.device | None = None
) -> RetinaFace:
    """Build the RetinaFace a checkpoint was saved from and load it, in eval mode on `device` (None: auto).

    Accepts the public `*_Final.pth` files (with or without the `module.` prefix), `.safetensors` files
    and in-memory state dicts; floating tensors of any precision are cast to float32.
    """
    if isinstance(path_or_state_dict, Mapping):
        source, state_dict = "state dict", dict(path_or_state_dict)
    else:
        source = str(Path(path_or_state_dict))
        state_dict = read_state_dict(path_or_state_dict)
    state_dict = strip_prefix(state_dict)
    variant = infer_variant(state_dict)
    if variant is None:
        raise CheckpointError(
            f"{source}: not a RetinaFace state dict "
            f"(no body.stage1.* or body.layer4.* keys among its {len(state_dict)})"
        )
    model = RetinaFace(variant)
    summary = mismatch(model.state_dict(), state_dict)
    if summary:
        raise CheckpointError(f"{source}: RetinaFace-{variant} weights do not fit: {summary}")
    model.load_state_dict(state_dict)
    return model.to(resolve_device(device)).eval()


def postprocess(
    loc: Tensor,
    conf: Tensor,
    landm: Tensor,
    priors: Tensor,
    frame_hw: tuple[int, int],
    score_threshold: float = 0.6,
) -> list[list[Face]]:
    """Faces per image from raw outputs (conf as logits) of a batch of frames of one size, as detect.py does.

    Scores > 0.02, the 5,000 best, NMS at IoU 0.4 with detect.py's inclusive pixel widths (x2 - x1 + 1), at
    most 750 per image, then the score threshold.
    """
    height, width = frame_hw
    scores = conf.softmax(dim=-1)[..., 1]
    # A face below the final threshold cannot suppress one above it (NMS only removes lower-scored boxes),
    # so thresholding before NMS rather than after gives the reference pipeline's result with less work.
    top_scores, top_index = scores.topk(min(TOP_K, scores.shape[1]), dim=1)
    passed = (top_scores > PREFILTER_SCORE) & (top_scores >= score_threshold)
    image_index, rank = torch.nonzero(passed, as_tuple=True)
    prior_index = top_index[image_index, rank]
    kept_scores = top_scores[image_index, rank]
    scale = torch.tensor([width, height], dtype=torch.float32, device=loc.device)
    boxes = decode_boxes(loc[image_index, prior_index], priors[prior_index]) * scale.repeat(2)
    points = decode_landmarks(landm[image_index, prior_index], priors[prior_index]) * scale.repeat(5)
    keep = torchvision.ops.batched_nms(pixel_inclusive(boxes), kept_scores, image_index, NMS_IOU)  # by score
    kept_image = image_index[keep]
    rank_in_image = F.one_hot(kept_image, len(loc)).cumsum(0)[torch.arange(len(keep), device=keep.device), kept_image]
    keep = keep[rank_in_image <= KEEP_TOP_K]

    # One device-to-host copy per batch: image index, score, box (4) and landmarks (10) per kept face.
    rows = torch.cat([image_index[keep, None].float(), kept_scores[keep, None], boxes[keep], points[keep]], 1)
    per_image: list[list[Face]] = [[] for _ in range(len(loc))]
    for image, score, *values in rows.cpu().tolist():
        landmarks = tuple(zip(values[4::2], values[5::2], strict=True))
        per_image[int(image)].append(Face(box=tuple(values[:4]), score=score, landmarks=landmarks))
    return per_image


def pixel_inclusive(boxes: Tensor) -> Tensor:
    """Boxes whose plain IoU equals the reference's `py_cpu_nms` overlap, which counts both end pixels (+1).

    Adding 1 to x2 and y2 makes every width, height and intersection side one pixel longer, exactly as there.
    """
    return boxes + boxes.new_tensor([0.0, 0.0, 1.0, 1.0])


@lru_cache(maxsize=16)
def _cached_priors(height: int, width: int, device: torch.device) -> Tensor:
    return prior_boxes(height, width).to(device)


class RetinaFaceDetector:
    """FaceDetector running a loaded RetinaFace on the model's device, at each frame's own resolution."""

    def __init__(self, model: RetinaFace, score_threshold: float = 0.6, batch_size: int = 16) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model.eval()
        self.name = f"retinaface-{model.variant}"
        self.score_threshold = score_threshold
        self.batch_size = batch_size
        self.device = next(model.parameters()).device
        self._mean = torch.tensor(BGR_MEAN, device=self.device).view(1, 3, 1, 1)

    def detect(self, frames: Sequence[np.ndarray]) -> list[list[Face]]:
        """Faces per frame; frames of one size share batches, other sizes go in batches of their own."""
        for frame in frames:
            check_frame(frame)
        by_size: dict[tuple[int, int], list[int]] = {}
        for index, frame in enumerate(frames):
            by_size.setdefault(frame.shape[:2], []).append(index)
        results: list[list[Face]] = [[] for _ in frames]
        for indices in by_size.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                for index, faces in zip(chunk, self._detect_batch([frames[i] for i in chunk]), strict=True):
                    results[index] = faces
        return results

    @torch.inference_mode()
    def _detect_batch(self, frames: Sequence[np.ndarray]) -> list[list[Face]]:
        height, width = frames[0].shape[:2]
        loc, conf, landm = self.model(self._upload(frames))
        priors = _cached_priors(height, width, self.device)
        return postprocess(loc, conf, landm, priors, (height, width), self.score_threshold)

    def _upload(self, frames: Sequence[np.ndarray]) -> Tensor:
        """The batch as BGR-minus-mean float NCHW on the device; uint8 travels, 4x less than float32."""
        on_cuda = self.device.type == "cuda"
        # Stacking straight into page-locked memory lets the copy to the GPU run without a staging copy.
        stacked = torch.empty((len(frames), *frames[0].shape), dtype=torch.uint8, pin_memory=on_cuda)
        np.stack(frames, out=stacked.numpy())
        batch = stacked.to(self.device, non_blocking=on_cuda)
        return batch.permute(0, 3, 1, 2).flip(1).float() - self._mean
