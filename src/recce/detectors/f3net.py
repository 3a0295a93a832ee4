"""F³-Net: Thinking in Frequency (Qian et al., ECCV 2020), following the third-party port yyk-wew/F3Net.

No official code exists. This follows the port (spec: baselines.md, F³-Net): the frequency-aware decomposition (FAD,
four soft DCT bands, 12 channels) and the local frequency statistics (LFS, sliding 10×10 DCT windows, six band
means of log magnitudes), one ImageNet Xception per branch, modes fad | lfs | both, one logit with BCE. Where the
port is fixed to 299 px, the band edges, LFS padding and output grid here follow from the input size. The port
defines a MixBlock but never wires it in; `mix_block: true` wires it after blocks 7 and 12, which is this
project's choice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from recce.detectors.base import Detector, DetectorOutput
from recce.detectors.layers.frequency import band_mask, dct_matrix, soft_band_filters
from recce.detectors.layers.xception import XCEPTION_IMAGENET, build_encoder, load_imagenet_weights, run_layers
from recce.detectors.registry import register_detector
from recce.weights import CheckpointError, load_strict, strip_prefix

MODES = ("fad", "lfs", "both")


@dataclass(frozen=True)
class F3NetConfig:
    num_classes: int = 1  # the port: one logit, BCE; DeepfakeBench's FAD-only checkpoints have 2
    mode: str = "both"  # fad | lfs | both (the port's FAD, LFS, Both)
    drop_rate: float = 0.2  # dropout before the linear head (the port's 0.2; DeepfakeBench 0.5)
    lfs_window: int = 10  # LFS DCT window side; padding (window - stride) // 2 keeps the grid at ceil(H / stride)
    lfs_stride: int = 2
    lfs_bands: int = 6  # LFS frequency bands, a multiple of 3 (the LFS Xception's conv1 copies the ImageNet kernel)
    mix_block: bool = False  # this project's wiring: MixBlock after blocks 7 and 12 (mode both); the port has none

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not 0 <= self.drop_rate < 1:
            raise ValueError(f"drop_rate must be in [0, 1), got {self.drop_rate!r}")
        if self.lfs_window < 2 or not 1 <= self.lfs_stride <= self.lfs_window:
            raise ValueError(f"lfs_window must be at least 2 and lfs_stride in 1..lfs_window, got {self}")
        if self.lfs_bands < 3 or self.lfs_bands % 3:
            raise ValueError(f"lfs_bands must be a positive multiple of 3, got {self.lfs_bands!r}")
        if self.mix_block and self.mode != "both":
            raise ValueError("mix_block needs mode 'both' (it exchanges information between the two branches)")


def fad_band_edges(size: int) -> list[tuple[float, float]]:
    """The port's low / mid / high / all bands on u + v: floor divisions on floats (106 and 149 at 299 px)."""
    return [(0, size // 2.82), (size // 2.82, size // 2), (size // 2, size * 2), (0, size * 2)]


class FrequencyAwareDecomposition(nn.Module):
    """FAD: per colour channel, the image passed through four soft DCT bands and back; B×3×N×N → B×12×N×N.

    Output channels: low RGB, mid RGB, high RGB, all RGB. The learnable band corrections are N×N, so the head is
    built for one input size.
    """

    def __init__(self, size: int):
        super().__init__()
        self.size = size
        self.register_buffer("dct", dct_matrix(size), persistent=False)
        bases = [band_mask(size, start, end) for start, end in fad_band_edges(size)]
        self.register_buffer("base", torch.stack(bases), persistent=False)
        self.learnable = nn.Parameter(torch.randn(4, size, size) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.size, self.size):
            raise ValueError(f"F³-Net's FAD head was built for {self.size}×{self.size} inputs, got {tuple(x.shape)}")
        spectrum = self.dct @ x @ self.dct.t()
        filters = soft_band_filters(self.base, self.learnable)
        bands = self.dct.t() @ (spectrum[:, None] * filters[None, :, None]) @ self.dct
        return bands.flatten(1, 2)


class LocalFrequencyStatistics(nn.Module):
    """LFS: grey level, sliding-window DCT, per band the mean of log10 magnitudes; B×3×H×W → B×bands×h×w.

    The port takes a band mean of log magnitudes where the paper takes the log of the band's L1 norm. Windows are
    unfolded and transformed as one batched matrix product; the band means are one more.
    """

    def __init__(self, window: int = 10, stride: int = 2, bands: int = 6):
        super().__init__()
        self.window, self.stride, self.padding = window, stride, (window - stride) // 2
        self.register_buffer("dct", dct_matrix(window), persistent=False)
        bases = [band_mask(window, 2.0 * window / bands * j, 2.0 * window / bands * (j + 1)) for j in range(bands)]
        self.register_buffer("base", torch.stack(bases), persistent=False)
        self.learnable = nn.Parameter(torch.randn(bands, window, window) * 0.1)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """The output grid for an input side (149×149 at 299 px, H/2 at even sizes)."""
        side = [(s + 2 * self.padding - self.window) // self.stride + 1 for s in (height, width)]
        return side[0], side[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grey = 0.299 * x[:, 0, :, :] + 0.587 * x[:, 1, :, :] + 0.114 * x[:, 2, :, :]
        grey = ((grey + 1.0) * 122.5).unsqueeze(1)  # [-1, 1] to the port's 0..245
        windows = F.unfold(grey, self.window, padding=self.padding, stride=self.stride)  # B, S·S, L
        b, _, count = windows.shape
        patches = windows.transpose(1, 2).reshape(b, count, 1, self.window, self.window)
        magnitudes = torch.log10(torch.abs(self.dct @ patches @ self.dct.t()) + 1e-15)
        weights = soft_band_filters(self.base, self.learnable) / self.base.sum((1, 2))[:, None, None]
        stats = magnitudes.reshape(b, count, -1) @ weights.flatten(1).t()  # B, L, bands
        return stats.transpose(1, 2).reshape(b, -1, *self.grid(*x.shape[-2:]))


class MixBlock(nn.Module):
    """The port's cross-attention between the FAD and LFS feature maps (square maps of equal size)."""

    def __init__(self, channels: int):
        super().__init__()
        self.fad_query = nn.Conv2d(channels, channels, 1)
        self.lfs_query = nn.Conv2d(channels, channels, 1)
        self.fad_key = nn.Conv2d(channels, channels, 1)
        self.lfs_key = nn.Conv2d(channels, channels, 1)
        self.fad_gamma = nn.Parameter(torch.zeros(1))
        self.lfs_gamma = nn.Parameter(torch.zeros(1))
        self.fad_conv = nn.Conv2d(channels, channels, 1, groups=channels)
        self.fad_bn = nn.BatchNorm2d(channels)
        self.lfs_conv = nn.Conv2d(channels, channels, 1, groups=channels)
        self.lfs_bn = nn.BatchNorm2d(channels)

    def forward(self, x_fad: torch.Tensor, x_lfs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = x_fad.shape
        if h != w or x_lfs.shape != x_fad.shape:
            raise ValueError(f"MixBlock needs equal square maps, got {tuple(x_fad.shape)} and {tuple(x_lfs.shape)}")
        query = torch.cat([self.fad_query(x_fad).reshape(-1, h, w), self.lfs_query(x_lfs).reshape(-1, h, w)], dim=2)
        key_fad = self.fad_key(x_fad).reshape(-1, h, w).transpose(1, 2)
        key_lfs = self.lfs_key(x_lfs).reshape(-1, h, w).transpose(1, 2)
        attention = torch.softmax(torch.bmm(query, torch.cat([key_fad, key_lfs], dim=1)), dim=-1).view(b, c, h, h)
        y_fad = x_fad + self.fad_bn(self.fad_conv(x_lfs * attention * (2.0 * torch.sigmoid(self.lfs_gamma) - 1.0)))
        y_lfs = x_lfs + self.lfs_bn(self.lfs_conv(x_fad * attention * (2.0 * torch.sigmoid(self.fad_gamma) - 1.0)))
        return y_fad, y_lfs


def _frequency_encoder(in_channels: int, stride: int) -> nn.Module:
    encoder = build_encoder()
    encoder.conv1 = nn.Conv2d(in_channels, 32, 3, stride, 0, bias=False)
    return encoder


@register_detector
class F3Net(Detector):
    """F³-Net (port). `forward(x)` takes images in [-1, 1] at the size the detector was built for."""

    name = "f3net"
    Config = F3NetConfig
    map_kinds = {"high_frequency": "heatmap"}
    source = "port"
    paper = "Qian et al., Thinking in Frequency: Face Forgery Detection by Mining Frequency-aware Clues (ECCV 2020)"
    pretrained_source = XCEPTION_IMAGENET
    reference = "yyk-wew/F3Net @ 01942ca (third-party port; no official code); golden heads match within 1e-4"
    choices = ("mix_block",)

    def __init__(self, config: F3NetConfig | None = None, preprocess=None, **options):
        super().__init__(config, preprocess, **options)
        c = self.config
        self.uses_fad, self.uses_lfs = c.mode in ("fad", "both"), c.mode in ("lfs", "both")
        if self.uses_fad:
            self.fad_head = FrequencyAwareDecomposition(self.preprocess.input_size)
            self.fad_encoder = _frequency_encoder(12, 2)
        if self.uses_lfs:
            self.lfs_head = LocalFrequencyStatistics(c.lfs_window, c.lfs_stride, c.lfs_bands)
            self.lfs_encoder = _frequency_encoder(c.lfs_bands, 1)  # stride 1: its grid matches FAD's at block 7
        if c.mix_block:
            self.mix7 = MixBlock(728)
            self.mix12 = MixBlock(1024)
        self.dropout = nn.Dropout(c.drop_rate)
        self.fc = nn.Linear(2048 * (self.uses_fad + self.uses_lfs), c.num_classes)

    def load_pretrained(self, path: str) -> None:
        """ImageNet Xception in every branch; the first convolutions get copies of the ImageNet kernel / copies."""
        for encoder in (getattr(self, "fad_encoder", None), getattr(self, "lfs_encoder", None)):
            if encoder is not None:
                load_imagenet_weights(encoder, path)

    def _features(self, fad: torch.Tensor | None, lfs: torch.Tensor | None) -> list[torch.Tensor]:
        if not self.config.mix_block:
            branches = ((getattr(self, "fad_encoder", None), fad), (getattr(self, "lfs_encoder", None), lfs))
            return [run_layers(encoder, x) for encoder, x in branches if x is not None]
        for (first, last), mix in ((("conv1", "block7"), self.mix7), (("block8", "block12"), self.mix12)):
            fad, lfs = mix(
                run_layers(self.fad_encoder, fad, first, last), run_layers(self.lfs_encoder, lfs, first, last)
            )
        return [run_layers(self.fad_encoder, fad, "conv3"), run_layers(self.lfs_encoder, lfs, "conv3")]

    def forward(self, x: torch.Tensor) -> DetectorOutput:
        with torch.autocast(x.device.type, enabled=False):  # log10 of near-zero DCT coefficients needs float32
            fad = self.fad_head(x.float()) if self.uses_fad else None
            lfs = self.lfs_head(x.float()) if self.uses_lfs else None
        # The heatmap: mean |high band| over RGB (FAD), or the highest LFS band's statistic (LFS only).
        high = fad[:, 6:9].abs().mean(1, keepdim=True) if fad is not None else lfs[:, -1:]
        pooled = [F.adaptive_avg_pool2d(F.relu(f), 1).flatten(1) for f in self._features(fad, lfs)]
        logits = self.fc(self.dropout(torch.cat(pooled, dim=1)))
        return DetectorOutput(logits, {"high_frequency": high}, {})

    @classmethod
    def from_reference(cls, state: Mapping[str, torch.Tensor], source: str, **options) -> F3Net:
        """The port's state dicts (modes FAD / LFS / Both, with or without `module.`) or DeepfakeBench's F³-Net.

        DeepfakeBench's checkpoints are the FAD branch only (`backbone.*`, `FAD_head.*`, a 2-way
        `backbone.last_linear`); its unused `backbone.adjust_channel.*` is ignored. The FAD size is read from the
        DCT matrix; an LFS-only port checkpoint is taken at the port's 299 px.
        """
        state = strip_prefix(state)
        if any(k.startswith("backbone.") for k in state):
            state, inferred = _from_deepfakebench(state, source)
            options.setdefault("drop_rate", 0.5)  # DeepfakeBench's f3net.yaml (no effect in eval mode)
        elif any(k.startswith(("FAD_head.", "LFS_head.")) for k in state):
            state, inferred = _from_port(state, source)
        else:
            raise CheckpointError(f"{source}: neither the port's (FAD_head / LFS_head) nor DeepfakeBench's F³-Net keys")
        head = state.get("fc.weight")
        if head is None or head.shape[0] not in (1, 2):
            raise CheckpointError(f"{source}: no 1- or 2-way F³-Net classifier head (fc.weight) found")
        inferred["num_classes"] = head.shape[0]
        for key, value in inferred.items():
            asked = options.pop(key, value)
            if asked != value:
                raise CheckpointError(f"{source}: the weights have {key}={value!r}, but {key}={asked!r} was asked")
        size = state["fad_head.learnable"].shape[-1] if "fad_head.learnable" in state else None
        preprocess = cls.default_preprocess.at_size(size)
        model = cls(cls.Config(**inferred, **options), preprocess)
        load_strict(model, state, source)
        return model.eval()


def _port_filters(state: Mapping[str, torch.Tensor], prefix: str, head: nn.Module, source: str) -> torch.Tensor:
    """The stacked learnable filters of a port head, after checking its DCT and band masks are the ones built here."""
    names = [f"{prefix}filters.{i}.{kind}" for i in range(len(head.base)) for kind in ("base", "learnable")]
    names.append(f"{prefix}_DCT_all" if isinstance(head, FrequencyAwareDecomposition) else f"{prefix}_DCT_patch")
    missing = [k for k in names if k not in state]
    if missing:
        raise CheckpointError(
            f"{source}: {len(missing)} missing keys of the port's heads (e.g. {', '.join(missing[:3])})"
        )
    bases = torch.stack([state[f"{prefix}filters.{i}.base"].float() for i in range(len(head.base))])
    if not torch.equal(bases, head.base) or not torch.allclose(state[names[-1]].float(), head.dct, atol=1e-6):
        raise CheckpointError(f"{source}: the {prefix.rstrip('.')} DCT or band layout differs from the port's")
    return torch.stack([state[f"{prefix}filters.{i}.learnable"] for i in range(len(head.base))])


def _branch(state: Mapping[str, torch.Tensor], prefix: str, target: str) -> dict[str, torch.Tensor]:
    return {
        target + k.removeprefix(prefix): v
        for k, v in state.items()
        if k.startswith(prefix) and not k.startswith((f"{prefix}fc.", f"{prefix}last_linear.", f"{prefix}adjust"))
    }


def _from_port(state: Mapping[str, torch.Tensor], source: str) -> tuple[dict[str, torch.Tensor], dict]:
    fad, lfs = any(k.startswith("FAD_head.") for k in state), any(k.startswith("LFS_head.") for k in state)
    inferred: dict = {"mode": "both" if fad and lfs else "fad" if fad else "lfs"}
    converted = {k: v for k, v in state.items() if k.startswith("fc.")}
    if fad:
        size = state["FAD_head._DCT_all"].shape[0]
        converted["fad_head.learnable"] = _port_filters(state, "FAD_head.", FrequencyAwareDecomposition(size), source)
        converted |= _branch(state, "FAD_xcep.", "fad_encoder.")
    if lfs:
        window = state["LFS_head._DCT_patch"].shape[0]
        bands = sum(1 for k in state if k.startswith("LFS_head.filters.") and k.endswith(".learnable"))
        inferred |= {"lfs_window": window, "lfs_bands": bands}
        head = LocalFrequencyStatistics(window, 2, bands)
        converted["lfs_head.learnable"] = _port_filters(state, "LFS_head.", head, source)
        converted |= _branch(state, "LFS_xcep.", "lfs_encoder.")
    return converted, inferred


def _from_deepfakebench(state: Mapping[str, torch.Tensor], source: str) -> tuple[dict[str, torch.Tensor], dict]:
    if "FAD_head._DCT_all" not in state:
        raise CheckpointError(f"{source}: DeepfakeBench backbone without FAD_head.*; is this its F³-Net checkpoint?")
    size = state["FAD_head._DCT_all"].shape[0]
    converted = _branch(state, "backbone.", "fad_encoder.")
    converted["fad_head.learnable"] = _port_filters(state, "FAD_head.", FrequencyAwareDecomposition(size), source)
    for suffix in ("weight", "bias"):
        for key in (f"backbone.last_linear.1.{suffix}", f"backbone.last_linear.{suffix}"):
            if key in state:
                converted[f"fc.{suffix}"] = state[key]
    return converted, {"mode": "fad"}
