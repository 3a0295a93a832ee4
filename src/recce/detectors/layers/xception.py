"""The Xception encoder most detectors are built on: timm's `legacy_xception` (the Cadene layout), run in stages."""

from __future__ import annotations

import os
from collections.abc import Mapping

import timm
import torch
from torch import nn

from recce.detectors.base import Preprocess
from recce.weights import CheckpointError, mismatch, read_state_dict, strip_prefix

XCEPTION_IMAGENET = (
    "xception-43020ad28.pth: timm's legacy_xception ImageNet weights (the Cadene port), in the v0.1-cadene release "
    "of pytorch-image-models"
)
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
    state = cadene_to_timm(strip_prefix(read_state_dict(path)))
    cleaned = {key: value for key, value in state.items() if not key.startswith(("fc.", "last_linear."))}
    channels = encoder.conv1.weight.shape[1]
    first = cleaned.get("conv1.weight")
    if first is not None and first.dim() == 4 and channels != first.shape[1] and channels % first.shape[1] == 0:
        copies = channels // first.shape[1]
        cleaned["conv1.weight"] = first.repeat(1, copies, 1, 1) / copies
    problem = mismatch(encoder.state_dict(), cleaned)
    if problem:
        raise CheckpointError(f"{path}: not ImageNet Xception weights: {problem}")
    encoder.load_state_dict(cleaned)


def cadene_to_timm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Cadene-named Xception tensors as timm `legacy_xception` holds them (some ports store 1x1 convs as matrices)."""
    return {
        key: value[:, :, None, None] if key.endswith("pointwise.weight") and value.dim() == 2 else value
        for key, value in state.items()
    }


DEEPFAKEBENCH_PREPROCESS = Preprocess(256, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # its Xception-based detectors


def published_xception(
    state: Mapping[str, torch.Tensor], source: str, detector: str, num_classes: int | None = None
) -> tuple[dict[str, torch.Tensor], int, Preprocess | None]:
    """A published Cadene-layout Xception classifier (bare, or DeepfakeBench's `backbone.`-prefixed one, whose
    unused `adjust_channel` is dropped) as (tensors with the encoder under `encoder.` and the head under `head.`,
    head size, DeepfakeBench's preprocessing or None)."""
    state = strip_prefix(state)
    preprocess = None
    if any(key.startswith("backbone.") for key in state):
        state = {
            key.removeprefix("backbone."): value
            for key, value in state.items()
            if key.startswith("backbone.") and not key.startswith("backbone.adjust_channel.")
        }
        preprocess = DEEPFAKEBENCH_PREPROCESS
    head = state.get("last_linear.weight")
    if head is None:
        raise CheckpointError(f"{source}: no {detector} classifier head (last_linear.weight) found; is this its file?")
    if num_classes is not None and num_classes != head.shape[0]:
        raise CheckpointError(
            f"{source}: the head has {head.shape[0]} outputs, but num_classes={num_classes} was asked"
        )
    if head.shape[0] not in (1, 2):
        raise CheckpointError(f"{source}: the head has {head.shape[0]} outputs; {detector} has 1 or 2")
    renamed = {
        key.replace("last_linear.", "head.") if key.startswith("last_linear.") else f"encoder.{key}": value
        for key, value in cadene_to_timm(state).items()
    }
    return renamed, head.shape[0], preprocess


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
