"""MultiAtt: multi-attentional deepfake detection (Zhao et al., CVPR 2021), as the authors' code computes it.

EfficientNet-B4 (the authors' padding, `layers/efficientnet.py`); M attention maps from block 21 (`b5`); textural
enhancement (v2) of block 5 (`b2`); bilinear attention pooling of the textures into a B x M x 32 matrix and of the
head features into one vector; two hard-swish heads. Training: attention dropout, the regional independence loss with
its feature centres (registered buffers, saved in checkpoints, averaged across processes), attention-guided
augmentation (AGDA) and a second pass on the augmented images with a match loss. The recipe's first stage trains the
backbone alone (`stage: backbone`); the second starts from it through `model.init_from`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from recce.detectors.base import Detector, DetectorOutput, Preprocess
from recce.detectors.layers.efficientnet import build_b4, load_advprop_weights, official_to_timm, run_b4
from recce.detectors.registry import register_detector
from recce.losses import classification_loss
from recce.weights import CheckpointError, load_strict, strip_prefix

STAGES = ("full", "backbone")
MIN_SIZE = 32  # b5 is then 2 x 2 and `final` 1 x 1; smaller inputs leave nothing for the 5 x 5 convolutions


@dataclass(frozen=True)
class MultiAttConfig:
    """The authors' `a1_b5_b2` model (their main.py); stored in checkpoints so they rebuild the same network."""

    num_classes: int = 2  # 2: softmax / CE (official); 1: sigmoid / BCE
    stage: str = "full"  # full: the whole model; backbone: recipe stage 1, B4 with its own classifier and CE only
    num_attentions: int = 4  # M
    mid_dims: int = 256  # width of the heads
    attention_dropout: float = 0.25  # training: each (sample, map) dropped with this probability
    final_dropout: float = 0.5  # training: dropout on the attention-pooled head features
    backbone_dropout: float = 0.4  # B4's dropout before its own classifier (stage backbone)
    drop_connect: float = 0.2  # B4's stochastic depth, 0.2 * i / 32 for block i
    alpha: float = 0.05  # initial centre-update rate of the regional independence loss (a buffer, saved)
    alpha_decay: float = 0.9  # the rate is multiplied by this after every epoch

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {self.stage!r}")
        for name in ("attention_dropout", "final_dropout", "backbone_dropout", "drop_connect"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if self.num_attentions < 1 or self.mid_dims < 1 or self.alpha <= 0:
            raise ValueError("num_attentions, mid_dims and alpha must be positive")


@dataclass(frozen=True)
class MultiAttLoss:
    """total = CE1 + aux_weight * regional1 + agda_weight * CE2 + match_weight * match (the authors' weights)."""

    aux_weight: float = 0.5  # regional independence loss of the first pass
    agda_weight: float = 1.0  # cross-entropy of the second pass on AGDA images; 0: no AGDA, no second pass
    match_weight: float = 0.1
    margin_real: float = 0.2  # intra-class margins (official inner_margin [0.2, -0.8]); a negative one pushes away
    margin_fake: float = -0.8
    inter_margin: float = 0.8  # minimum distance between feature centres
    agda_kernel: int = 11  # Gaussian blur of the half-size image
    agda_sigma: float = 7.0
    agda_scale: float = 0.5
    agda_threshold: tuple[float, float] = (0.4, 0.6)  # uniform range, one draw per batch
    agda_zoom: tuple[float, float] = (3.0, 5.0)  # uniform range, one draw per batch
    agda_noise: float = 0.1  # std of the Gaussian noise added to the blurred image

    def __post_init__(self):
        for name in ("agda_threshold", "agda_zoom"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 2 or value[0] > value[1]:
                raise ValueError(f"{name} must be a [low, high] range, got {getattr(self, name)!r}")
            object.__setattr__(self, name, value)
        if self.agda_kernel < 1 or self.agda_kernel % 2 == 0 or self.agda_sigma <= 0:
            raise ValueError("agda_kernel must be odd and positive and agda_sigma positive")


class AgdaDraws(Protocol):
    """Where AGDA's random draws come from; parity tests replay the reference's recorded draws through it."""

    def index(self, weights: torch.Tensor) -> torch.Tensor:
        """One map index per image (B,), drawn with probabilities proportional to `weights` (B x M)."""

    def threshold(self, low: float, high: float) -> float: ...

    def zoom(self, low: float, high: float) -> float: ...

    def noise(self, like: torch.Tensor) -> torch.Tensor:
        """Standard normal noise shaped like `like`."""


class TorchDraws:
    """The default: torch's global generators, which the trainer saves and restores, so a resumed run is exact.

    (The reference draws the threshold and zoom with Python's `random`; the distributions are the same.)
    """

    def index(self, weights: torch.Tensor) -> torch.Tensor:
        return torch.multinomial(weights, 1, replacement=True)[:, 0]

    def threshold(self, low: float, high: float) -> float:
        return low + (high - low) * torch.rand(()).item()

    def zoom(self, low: float, high: float) -> float:
        return low + (high - low) * torch.rand(()).item()

    def noise(self, like: torch.Tensor) -> torch.Tensor:
        return torch.randn_like(like)


class AttentionMap(nn.Module):
    """M attention maps: conv3x3 -> BN -> ReLU -> conv1x1 -> BN -> ELU + 1, times a fixed border mask."""

    def __init__(self, channels: int, maps: int):
        super().__init__()
        mask = torch.zeros(1, 1, 24, 24)
        mask[..., 2:-2, 2:-2] = 1
        self.register_buffer("mask", mask)  # the authors' constant, saved under their key name
        self.conv_extract = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, maps, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(maps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn2(self.conv2(F.relu(self.bn1(self.conv_extract(x)))))
        return (F.elu(x) + 1) * F.interpolate(self.mask, x.shape[-2:], mode="nearest").to(x.dtype)


class TextureEnhance(nn.Module):
    """Textural enhancement v2: shallow features minus their local means, per attention map (grouped dense block).

    Returns the enhanced textures (B x M x C x H x W) and the local means D (B x C x h x w, the attention size).
    """

    def __init__(self, channels: int, maps: int):
        super().__init__()
        c, m = channels, maps
        self.maps = maps
        self.conv_extract = nn.Conv2d(c, c, 3, padding=1)
        self.conv0 = nn.Conv2d(c * m, c * m, 5, padding=2, groups=m)
        self.conv1 = nn.Conv2d(c * m, c * m, 3, padding=1, groups=m)
        self.bn1 = nn.BatchNorm2d(c * m)
        self.conv2 = nn.Conv2d(2 * c * m, c * m, 3, padding=1, groups=m)
        self.bn2 = nn.BatchNorm2d(2 * c * m)
        self.conv3 = nn.Conv2d(3 * c * m, c * m, 3, padding=1, groups=m)
        self.bn3 = nn.BatchNorm2d(3 * c * m)
        self.conv_last = nn.Conv2d(4 * c * m, c * m, 1, groups=m)
        self.bn4 = nn.BatchNorm2d(4 * c * m)
        self.bn_last = nn.BatchNorm2d(c * m)

    def _cat(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Concatenate within each map's channel group."""
        n, _, h, w = a.shape
        return torch.cat([a.reshape(n, self.maps, -1, h, w), b.reshape(n, self.maps, -1, h, w)], 2).reshape(n, -1, h, w)

    def forward(self, features: torch.Tensor, attention: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, c, h, w = features.shape
        f = self.conv_extract(features)
        local = F.adaptive_avg_pool2d(f, attention.shape[-2:])
        if h > local.shape[2]:
            f = f - F.interpolate(local, (h, w), mode="nearest")
        gate = torch.tanh(F.interpolate(attention.detach(), (h, w), mode="bilinear", align_corners=True))
        f = (f[:, None] * gate[:, :, None]).reshape(n, -1, h, w)
        f0 = self.conv0(f)
        c1 = self._cat(f0, self.conv1(F.relu(self.bn1(f0))))
        c2 = self._cat(c1, self.conv2(F.relu(self.bn2(c1))))
        c3 = self._cat(c2, self.conv3(F.relu(self.bn3(c2))))
        textures = F.relu(self.bn_last(self.conv_last(F.relu(self.bn4(c3)))))
        return textures.reshape(n, -1, c, h, w), local


def _resized(attention: torch.Tensor, size: torch.Size) -> torch.Tensor:
    if attention.shape[-2:] == size:
        return attention
    return F.interpolate(attention, size, mode="bilinear", align_corners=True)


def bilinear_pool(features: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """P[b, m] = sum_hw A[b, m] * F[b, (m)], L2-normalised over channels; F is B x C x H x W or B x M x C x H x W."""
    attention = _resized(attention, features.shape[-2:])
    equation = "bmhw,bchw->bmc" if features.dim() == 4 else "bmhw,bmchw->bmc"
    return F.normalize(torch.einsum(equation, attention, features), p=2, dim=-1)


def weighted_mean(features: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """sum_hw S * F / sum_hw S for a B x 1 x h x w weight S (+ 1e-8), resized to the features."""
    weight = _resized(weight, features.shape[-2:]) + 1e-8
    return torch.einsum("bhw,bchw->bc", weight[:, 0], features) / weight.sum((2, 3))


def standardised(x: torch.Tensor) -> torch.Tensor:
    """Each channel minus its spatial mean, over its (unbiased) spatial std + 1e-8."""
    x = x - x.mean((2, 3), keepdim=True)
    return x / (torch.std(x, dim=(2, 3), keepdim=True) + 1e-8)


def gaussian_blur(x: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding (kornia's GaussianBlur2d, as the reference uses it)."""
    offsets = torch.arange(size, device=x.device, dtype=torch.float32) - size // 2
    kernel = torch.exp(-offsets.pow(2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(x.dtype)
    channels, half = x.shape[1], size // 2
    x = F.conv2d(
        F.pad(x, (half, half, 0, 0), mode="reflect"),
        kernel.view(1, 1, 1, size).expand(channels, 1, 1, size),
        groups=channels,
    )
    return F.conv2d(
        F.pad(x, (0, 0, half, half), mode="reflect"),
        kernel.view(1, 1, size, 1).expand(channels, 1, size, 1),
        groups=channels,
    )


class RegionalIndependence(nn.Module):
    """The regional independence loss; its feature centres and update rate are registered buffers (real state)."""

    def __init__(self, maps: int, channels: int, alpha: float):
        super().__init__()
        self.register_buffer("feature_centers", torch.zeros(maps, channels))
        self.register_buffer("alpha", torch.tensor(float(alpha)))

    def forward(
        self, features: torch.Tensor, labels: torch.Tensor, cfg: MultiAttLoss
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(intra, inter) for pooled textural features B x M x C; in training the centres move towards the reals'."""
        features = features.float()
        centres = self.feature_centers
        real = (labels == 0).view(-1, 1, 1).to(features.dtype)
        moved = centres + self.alpha * torch.mean((features - centres) * real, dim=0)  # not detached, as official
        if self.training:
            self._update(moved.detach())
        margin = torch.where(labels == 0, cfg.margin_real, cfg.margin_fake).to(features.dtype)
        sign = torch.sign(margin)
        distance = torch.linalg.vector_norm(features - moved, dim=(1, 2))
        intra = F.relu(distance * sign - margin).mean()
        first, second = torch.triu_indices(len(moved), len(moved), 1, device=moved.device)
        gaps = torch.linalg.vector_norm(moved[first] - moved[second], dim=1)
        inter = F.relu(cfg.inter_margin - gaps).sum() / len(moved) / self.alpha
        return intra, inter

    @torch.no_grad()
    def _update(self, centres: torch.Tensor) -> None:
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(centres, dist.ReduceOp.SUM)
            centres /= dist.get_world_size()
        self.feature_centers.copy_(centres)


def _deepfakebench(state: Mapping[str, torch.Tensor]) -> bool:
    return any(
        key.startswith(("backbone.efficientnet.", "attention_generation.", "projection_final.")) for key in state
    )


@register_detector
class MultiAtt(Detector):
    """MultiAtt. `forward(x)` takes images normalised to [-1, 1]; maps["attention"] is the mean of the M maps.

    At `stage: backbone` (no attention maps yet) maps["attention"] is the class activation map of B4's classifier:
    the (fake - real) logit contribution of each position, whose spatial mean plus the bias gap is the logit gap.
    """

    name = "multiatt"
    Config = MultiAttConfig
    Loss = MultiAttLoss
    default_preprocess = Preprocess(380, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    map_kinds = {"attention": "heatmap"}
    source = "official code"
    paper = "Zhao et al., Multi-attentional Deepfake Detection (CVPR 2021)"
    reference = "the authors' code, yoctta/multiple-attention @ bb069cc; golden vectors match within 1e-4"
    backbone = "tf_efficientnet_b4"
    pretrained_source = (
        "AdvProp EfficientNet-B4 weights: adv-efficientnet-b4-44fb3a87.pth (the lukemelas EfficientNet-PyTorch "
        "releases) or timm's tf_efficientnet_b4.ap_in1k file (see docs/detectors/multiatt.md)"
    )

    def __init__(self, config: MultiAttConfig | None = None, preprocess=None, **options):
        super().__init__(config, preprocess, **options)
        c = self.config
        backbone = c.stage == "backbone"
        self.net = build_b4(c.num_classes if backbone else 0, c.backbone_dropout, c.drop_connect)
        if backbone:
            return
        textures = self.net.blocks[1][-1].conv_pwl.out_channels  # b2: 32
        deep = self.net.blocks[4][-1].conv_pwl.out_channels  # b5: 160
        self.attentions = AttentionMap(deep, c.num_attentions)
        self.texture_enhance = TextureEnhance(textures, c.num_attentions)
        self.projection_local = nn.Sequential(
            nn.Linear(c.num_attentions * textures, c.mid_dims), nn.Hardswish(), nn.Linear(c.mid_dims, c.mid_dims)
        )
        self.project_final = nn.Linear(self.net.num_features, c.mid_dims)
        self.ensemble_classifier_fc = nn.Sequential(
            nn.Linear(2 * c.mid_dims, c.mid_dims), nn.Hardswish(), nn.Linear(c.mid_dims, c.num_classes)
        )
        self.auxiliary_loss = RegionalIndependence(c.num_attentions, textures, c.alpha)

    def load_pretrained(self, path: str) -> None:
        load_advprop_weights(self.net, path)

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every intermediate by name: taps, attention maps, textures, pooled features, logits.

        In training, the attention-dropout mask multiplies the texture matrix and the global weighting; the texture
        branch and the regional features use the undropped maps.
        """
        if min(x.shape[-2:]) < MIN_SIZE:
            raise ValueError(f"multiatt needs inputs of at least {MIN_SIZE} px, got {x.shape[-2]} x {x.shape[-1]}")
        out = run_b4(self.net, x)
        if self.config.stage == "backbone":
            out["logits"] = self.net.forward_head(out["final"])
            return out
        c = self.config
        attention = self.attentions(out["b5"])
        textures, local = self.texture_enhance(out["b2"], attention)
        matrix = bilinear_pool(textures, attention)
        weight = attention
        if self.training and c.attention_dropout:
            keep = torch.empty(matrix.shape[:2], device=x.device, dtype=matrix.dtype).bernoulli_(
                1 - c.attention_dropout
            )
            keep = keep / (1 - c.attention_dropout)
            matrix = matrix * keep[..., None]
            weight = attention * keep[..., None, None]
        pooled = weighted_mean(out["final"], weight.sum(1, keepdim=True))
        pooled = F.dropout(pooled, c.final_dropout, self.training)
        local_head = F.hardswish(self.projection_local(matrix.flatten(1)))
        global_head = F.hardswish(self.project_final(pooled))
        ensemble = torch.cat((local_head, global_head), 1)
        out.update(
            attention=attention,
            textures=textures,
            local=local,
            matrix=matrix,
            pooled=pooled,
            ensemble=ensemble,
            regional=bilinear_pool(standardised(local), attention),
            logits=self.ensemble_classifier_fc(ensemble),
        )
        return out

    def forward(self, x: torch.Tensor) -> DetectorOutput:
        out = self.features(x)
        if self.config.stage == "backbone":  # no attention maps yet: the class activation map of B4's classifier
            weight = self.net.classifier.weight
            direction = weight[-1] - weight[0] if len(weight) == 2 else weight[0]
            activation = torch.einsum("c,bchw->bhw", direction.to(out["final"].dtype), out["final"])[:, None]
            return DetectorOutput(out["logits"], {"attention": activation}, {})
        attention = out["attention"]
        maps = {"attention": attention.mean(1, keepdim=True)}
        return DetectorOutput(out["logits"], maps, {"attention_maps": attention, "regional": out["regional"]})

    def loss(self, output: DetectorOutput, images: torch.Tensor, labels: torch.Tensor, cfg: MultiAttLoss):
        """One pass: CE + aux_weight * regional independence (which moves the centres in training)."""
        classification = classification_loss(output.logits, labels)
        if self.config.stage == "backbone":
            return {"total": classification, "classification": classification}
        intra, inter = self.auxiliary_loss(output.aux["regional"], labels, cfg)
        regional = intra + inter
        total = classification + cfg.aux_weight * regional
        return {"total": total, "classification": classification, "regional": regional, "intra": intra, "inter": inter}

    def training_step(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        forward: Callable[[torch.Tensor], DetectorOutput],
        cfg: MultiAttLoss,
        draws: AgdaDraws | None = None,
    ) -> dict[str, torch.Tensor]:
        """The first pass, AGDA from its attention maps, the second pass on the augmented images, the match loss.

        The second pass's regional loss is computed (and moves the centres again) but is not optimised, as in the
        reference. `draws` replaces torch's generators for AGDA (parity tests replay recorded draws).
        """
        first = forward(images)
        terms = self.loss(first, images, labels, cfg)
        if self.config.stage == "backbone" or not cfg.agda_weight:
            return terms
        with torch.no_grad():
            augmented, index = self.augment(images, first.aux["attention_maps"], cfg, draws)
        second = forward(augmented)
        again = self.loss(second, augmented, labels, cfg)
        kept = 1 - F.one_hot(index, self.config.num_attentions).to(first.aux["regional"].dtype)
        match = (torch.linalg.vector_norm(second.aux["regional"] - first.aux["regional"], dim=-1) * kept).mean()
        total = terms["total"] + cfg.agda_weight * again["classification"] + cfg.match_weight * match
        return {
            **terms,
            "total": total,
            "classification_agda": again["classification"],
            "regional_agda": again["regional"],
            "match": match,
        }

    @torch.no_grad()
    def augment(
        self, images: torch.Tensor, attention: torch.Tensor, cfg: MultiAttLoss, draws: AgdaDraws | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention-guided augmentation ('soft'): blur + noise where one drawn attention map is high."""
        draws = draws or TorchDraws()
        attention = attention.float()
        images_f = images.float()
        index = draws.index(torch.sqrt(attention.sum((2, 3)) + 1))
        height, width = images.shape[-2:]
        chosen = F.interpolate(attention, (height, width), mode="bilinear", align_corners=True)
        chosen = chosen.gather(1, index.view(-1, 1, 1, 1).expand(-1, 1, height, width))
        chosen = chosen / (chosen.flatten(1).max(1).values.view(-1, 1, 1, 1) + 1e-8)
        threshold = draws.threshold(*cfg.agda_threshold)
        zoom = draws.zoom(*cfg.agda_zoom)
        bottom = torch.sigmoid((torch.zeros((), device=images.device) - threshold) * zoom)
        weight = (torch.sigmoid((chosen - threshold) * zoom) - bottom) / (1 - bottom)
        small = F.interpolate(images_f, scale_factor=cfg.agda_scale, mode="bilinear", align_corners=True)
        small = gaussian_blur(small, cfg.agda_kernel, cfg.agda_sigma)
        small = small + draws.noise(small) * cfg.agda_noise
        small = F.interpolate(small, (height, width), mode="bilinear", align_corners=True)
        return (images_f * (1 - weight) + small * weight).to(images.dtype), index

    def epoch_end(self, epoch: int) -> None:
        if self.config.stage == "full":
            self.auxiliary_loss.alpha.mul_(self.config.alpha_decay)

    @classmethod
    def from_reference(cls, state: Mapping[str, torch.Tensor], source: str, **options) -> MultiAtt:
        """The authors' `ckpt_*.pth` state dicts (official key names, with or without `module.`), either stage.

        A second-stage file (`a1_b5_b2`) gives the full model; a first-stage file (`Efb4`, trained with the
        backbone's own classifier) gives `stage: backbone`. The unused B4 classifier of a full model and the margin
        buffer (a loss setting here: `loss.margin_real` / `margin_fake`) are dropped. DeepfakeBench's files are
        refused: see the error.
        """
        state = strip_prefix(state)
        if _deepfakebench(state):
            raise CheckpointError(
                f"{source}: DeepfakeBench's multi_attention weights cannot be imported as multiatt: its texture block "
                "is v1 (texture_enhance.conv0 a 1x1 conv on 32 channels, no conv_extract, 512 local features) where "
                "the authors' is the grouped v2, its stem is an unpadded conv and it skips the swish after stem and "
                "head, so even its backbone computes another function, and its feature centres are not saved"
            )
        net = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
        if not net:
            raise CheckpointError(f"{source}: no EfficientNet backbone (net.*) found; is this a MultiAtt checkpoint?")
        texture = state.get("texture_enhance.conv_extract.weight")
        stage = options.pop("stage", None) or ("full" if texture is not None and texture.shape[0] == 32 else "backbone")
        head = state.get("ensemble_classifier_fc.2.weight" if stage == "full" else "net._fc.weight")
        if head is None:
            raise CheckpointError(f"{source}: no {stage} MultiAtt classifier found; is this a MultiAtt checkpoint?")
        if stage == "full":
            options.setdefault("num_attentions", state["attentions.conv2.weight"].shape[0])
            options.setdefault("mid_dims", head.shape[1])
        asked = options.setdefault("num_classes", head.shape[0])
        if asked != head.shape[0]:
            raise CheckpointError(f"{source}: the head has {head.shape[0]} outputs, but num_classes={asked} was asked")
        try:
            model = cls(stage=stage, **options)
        except ValueError as error:
            raise CheckpointError(f"{source}: {error}") from None
        weights = {f"net.{k}": v for k, v in official_to_timm(net, model.net).items()}
        if stage == "full":
            weights = {k: v for k, v in weights.items() if not k.startswith("net.classifier.")}
            heads = {k: v for k, v in state.items() if not k.startswith("net.") and k != "auxiliary_loss.inner_margin"}
            weights.update(heads)
        load_strict(model, weights, source)
        return model.eval()
