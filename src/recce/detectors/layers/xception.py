"""The Xception encoder most detectors are built on: timm's `legacy_xception` (the Cadene layout), run in stages."""

from __future__ import annotations

import os

import timm
import torch
from torch import nn

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
    """Load `xception-43020ad28.pth` (timm / Cadene ImageNet Xception) into the encoder, dropping the 1000-way head.

    An encoder whose first convolution takes k·3 channels (F³-Net's frequency branches) gets k copies of the
    ImageNet kernel divided by k, so an input of k equal RGB copies gives the ImageNet activations.
    """
    state = strip_prefix(read_state_dict(path))
    cleaned = {}
    for key, value in state.items():
        if key.startswith(("fc.", "last_linear.")):
            continue
        if key.endswith("pointwise.weight") and value.dim() == 2:  # some ports store 1x1 convs as matrices
            value = value[:, :, None, None]
        cleaned[key] = value
    channels = encoder.conv1.weight.shape[1]
    first = cleaned.get("conv1.weight")
    if first is not None and first.dim() == 4 and channels != first.shape[1] and channels % first.shape[1] == 0:
        copies = channels // first.shape[1]
        cleaned["conv1.weight"] = first.repeat(1, copies, 1, 1) / copies
    problem = mismatch(encoder.state_dict(), cleaned)
    if problem:
        raise CheckpointError(f"{path}: not ImageNet Xception weights: {problem}")
    encoder.load_state_dict(cleaned)


def run_stage(encoder: nn.Module, stage: int, x: torch.Tensor) -> torch.Tensor:
    """Run one of the encoder stages RECCE taps into (entry flow + block4, block5-7, block8, exit flow)."""
    for name in ENCODER_STAGES[stage]:
        x = getattr(encoder, name)(x)
    return x


def run_layers(encoder: nn.Module, x: torch.Tensor, first: str = "conv1", last: str = "act4") -> torch.Tensor:
    """Run the encoder's layers from `first` to `last` (both included, names of `ENCODER_STAGES`)."""
    order = [name for stage in ENCODER_STAGES for name in stage]
    for name in order[order.index(first) : order.index(last) + 1]:
        x = getattr(encoder, name)(x)
    return x


def run_all(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """All four stages: the 2048-channel exit-flow features."""
    for stage in range(len(ENCODER_STAGES)):
        x = run_stage(encoder, stage, x)
    return x
