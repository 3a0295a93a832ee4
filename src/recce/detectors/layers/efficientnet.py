"""EfficientNet-B4 as the MultiAtt authors run it: timm `tf_efficientnet_b4` with their padding and BN settings.

The authors vendored an old efficientnet_pytorch that pads every convolution as if its input were 380 x 380: stride-2
convolutions always get (0, 1) (k=3) or (1, 2) (k=5) zeros on (left/top, right/bottom), whatever the input size, so
at 380 px the maps are 95 -> 47 -> 23 -> 11 where a correct B4 gives 48 / 24 / 12. Stride-1 convolutions get the
symmetric (k - 1) / 2 that timm already uses. Replacing timm's stride-2 same-padding convolutions by fixed-padding
ones reproduces the authors' function at any input size. Their weights use the lukemelas key names; `official_to_timm`
renames them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import timm
import torch
import torch.nn.functional as F
from torch import nn

from recce.weights import CheckpointError, mismatch, read_state_dict, strip_prefix

BN_MOMENTUM = 0.01  # the authors' 1 - 0.99 (PyTorch convention); timm's default is 0.1
TAPS = {"b2": 1, "b5": 4}  # tap name -> timm stage whose output it is (lukemelas blocks 5 and 21)


class FixedPadConv2d(nn.Conv2d):
    """A stride-2 convolution padded as the authors' EfficientNet pads it for a 380-px input, at every input size."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            0,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
        )
        self.load_state_dict(conv.state_dict())
        self.pad = tuple(
            p for k, s in zip(conv.kernel_size[::-1], conv.stride[::-1], strict=True) for p in _fixed_pad(k, s)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.pad))


def _fixed_pad(kernel: int, stride: int, size: int = 380) -> tuple[int, int]:
    """TF 'same' padding computed for a `size`-px input, the rule the authors' code applies to every layer."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def build_b4(num_classes: int = 0, drop_rate: float = 0.4, drop_connect: float = 0.2) -> nn.Module:
    """timm `tf_efficientnet_b4` (random weights) with the authors' padding, BN eps 1e-3 / momentum 0.01 and
    drop-connect 0.2 * i / 32; `num_classes` 0 leaves the classifier out (MultiAtt's second stage does not use it).
    """
    net = timm.create_model(
        "tf_efficientnet_b4",
        pretrained=False,
        num_classes=num_classes,
        drop_rate=drop_rate,
        drop_path_rate=drop_connect,
        bn_momentum=BN_MOMENTUM,
    )
    strided = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Conv2d) and max(m.stride) > 1]
    for name, conv in strided:
        parent, _, child = name.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, child, FixedPadConv2d(conv))
    return net


def run_b4(net: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The taps MultiAtt uses: b2, b5 and `final` (head conv -> BN -> swish)."""
    taps = {}
    x = net.bn1(net.conv_stem(x))
    for index, stage in enumerate(net.blocks):
        x = stage(x)
        for name, tapped in TAPS.items():
            if tapped == index:
                taps[name] = x
    taps["final"] = net.bn2(net.conv_head(x))
    return taps


_STEM = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_FIRST_STAGE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LATER_STAGES = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_SE = {"_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}


def official_to_timm(state: Mapping[str, torch.Tensor], net: nn.Module) -> dict[str, torch.Tensor]:
    """lukemelas EfficientNet key names (`_blocks.12._bn1.weight`) to timm's (`blocks.3.2.bn2.weight`) for `net`."""
    where = [(s, j) for s, stage in enumerate(net.blocks) for j in range(len(stage))]
    renamed = {}
    for key, value in state.items():
        match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if match is None:
            layer, _, leaf = key.partition(".")
            renamed[f"{_STEM.get(layer, layer)}.{leaf}"] = value
            continue
        index, layer, leaf = int(match[1]), match[2], match[3]
        if index >= len(where):
            renamed[key] = value  # reported as unexpected by the caller's mismatch check
            continue
        stage, block = where[index]
        names = {**(_FIRST_STAGE if stage == 0 else _LATER_STAGES), **_SE}
        renamed[f"blocks.{stage}.{block}.{names.get(layer, layer)}.{leaf}"] = value
    return renamed


def is_official(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether keys use the lukemelas names (`_conv_stem`, `_blocks.N`)."""
    return any(key.startswith(("_conv_stem.", "_blocks.")) for key in state)


def load_advprop_weights(net: nn.Module, path: str | os.PathLike) -> None:
    """ImageNet AdvProp B4 weights from a local file, lukemelas (`adv-efficientnet-b4-44fb3a87.pth`) or timm
    (`tf_efficientnet_b4.ap_in1k`) names; the 1000-way classifier is dropped and `num_batches_tracked` is optional.
    """
    state = strip_prefix(read_state_dict(path))
    if is_official(state):
        state = official_to_timm(state, net)
    own = net.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    problem = mismatch(_weights_only(own), _weights_only(state))
    if problem:
        raise CheckpointError(f"{path}: not EfficientNet-B4 ImageNet weights: {problem}")
    net.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items() if k in own}, strict=False)


def _weights_only(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Without the classifier and the BN batch counters (ImageNet files may or may not hold either)."""
    return {k: v for k, v in state.items() if not k.startswith("classifier.") and not k.endswith("num_batches_tracked")}
