"""Freq-SCL: frequency-aware discriminative features with a single-center loss (Li et al., CVPR 2021).

Only the loss is firm: it follows the public implementation Amadeus-AI/pytorch-single-center-loss exactly (its
golden vectors match), with this project's labels (0 = real = natural). The network is known only from the
paper's summary (spec: baselines.md, Freq-SCL), so every structural value below is this project's choice, a field
of `FreqSCLConfig` listed in `choices`: RGB → YCbCr → 8×8 block DCT (192 frequency channels at H/8) → frequency
mining block (BatchNorm, 3×3 convolutions, a 2×2 max pool to the RGB grid, squeeze-and-excitation attention)
→ fused with the RGB Xception stream after block 3 by concat + 1×1 conv + BN + ReLU → Xception middle and exit
flows → FC 2048 → 1000 (the embedding the loss acts on) → FC 1000 → 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from recce.detectors.base import Detector, DetectorOutput
from recce.detectors.layers.frequency import block_dct, dct_matrix, pad_to_multiple
from recce.detectors.layers.xception import XCEPTION_IMAGENET, build_encoder, load_imagenet_weights, run_layers
from recce.detectors.registry import register_detector
from recce.losses import classification_loss

# JPEG's full-range RGB → YCbCr (ITU-R BT.601), rows Y, Cb, Cr, without the +0.5 offset of Cb and Cr
_YCBCR = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))


@dataclass(frozen=True)
class FreqSCLConfig:
    num_classes: int = 2  # the paper's FC 1000 → 2 with cross-entropy
    embedding_dim: int = 1000  # D: the embedding the single-center loss acts on (public default)
    dct_block: int = 8  # b×b block DCT of Y, Cb, Cr: 3·b² frequency channels at H/b (192 at 8)
    dct_batchnorm: bool = True  # BatchNorm on the DCT channels first: their scales differ by orders of magnitude
    mining_channels: int = 256  # width of the frequency mining block's 3×3 convolutions
    mining_convs: int = 2  # 3×3 conv + BN + ReLU layers in the mining block
    attention_reduction: int = 16  # squeeze-and-excitation reduction of the mining block's channel attention
    drop_rate: float = 0.2  # dropout before the embedding FC

    def __post_init__(self):
        for name in ("embedding_dim", "dct_block", "mining_channels", "mining_convs", "attention_reduction"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.num_classes != 2:
            raise ValueError("Freq-SCL's head is two-way (num_classes 2): the loss is cross-entropy + single-center")
        if not 0 <= self.drop_rate < 1:
            raise ValueError(f"drop_rate must be in [0, 1), got {self.drop_rate!r}")


@dataclass(frozen=True)
class FreqSCLLoss:
    """total = CE + lambda_sc · L_sc; L_sc's margin is margin·√D (public defaults m = 0.3, λ = 0.5)."""

    lambda_sc: float = 0.5
    margin: float = 0.3


def single_center_loss(
    features: torch.Tensor, centre: torch.Tensor, labels: torch.Tensor, margin: float = 0.3
) -> torch.Tensor:
    """L_sc = M_nat + max(M_nat − M_man + m·√D, 0); labels 0 = real (natural), 1 = fake (manipulated).

    M_nat / M_man: mean Euclidean distance of the natural / manipulated features to the centre. As the reference,
    each masked distance is clamped to [1e-12, 1e12] before summing, and a class without samples is not averaged
    (its sum of clamps stays): the reference's values and gradients in every case, without a host synchronisation.
    """
    features = features.float()
    distances = torch.sqrt(((features - centre.float()) ** 2).sum(1))
    natural = (labels == 0).float()
    count, batch = natural.sum(), float(len(labels))
    m_nat = (distances * natural).clamp(1e-12, 1e12).sum()
    m_man = (distances * (1 - natural)).clamp(1e-12, 1e12).sum()
    m_nat = torch.where(count > 0, m_nat / count.clamp(min=1), m_nat)
    m_man = torch.where(count < batch, m_man / (batch - count).clamp(min=1), m_man)
    hinge = margin * torch.tensor(float(features.shape[1]), device=features.device).sqrt()
    return m_nat + torch.clamp(m_nat - m_man + hinge, min=0)


class FrequencyMining(nn.Module):
    """Block-DCT channels → convolutions → max pool to the RGB stream's grid → channel attention."""

    def __init__(self, in_channels: int, config: FreqSCLConfig):
        super().__init__()
        c = config.mining_channels
        layers: list[nn.Module] = [nn.BatchNorm2d(in_channels)] if config.dct_batchnorm else []
        for i in range(config.mining_convs):
            layers += [nn.Conv2d(in_channels if i == 0 else c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)]
            layers.append(nn.ReLU(inplace=True))
        self.convs = nn.Sequential(*layers)
        hidden = max(c // config.attention_reduction, 1)
        self.attention = nn.Sequential(nn.Linear(c, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, c), nn.Sigmoid())

    def forward(self, coefficients: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        # H/8 → ⌈H/16⌉, Xception's block-3 grid, except at sides 16k + 1 … 16k + 6 where Xception has one cell less:
        # there the trailing cell (mostly zero padding) is dropped.
        x = F.max_pool2d(self.convs(coefficients), 2, ceil_mode=True)[..., : grid[0], : grid[1]]
        weights = self.attention(x.mean((2, 3)))
        return x * weights[:, :, None, None]


@register_detector
class FreqSCL(Detector):
    """Freq-SCL (re-implementation). `forward(x)` returns the two-way logits and, in aux, the 1000-d embedding."""

    name = "freqscl"
    Config = FreqSCLConfig
    Loss = FreqSCLLoss
    source = "re-implementation"
    paper = (
        "Li et al., Frequency-aware Discriminative Feature Learning Supervised by Single-Center Loss for Face "
        "Forgery Detection (CVPR 2021)"
    )
    pretrained_source = XCEPTION_IMAGENET
    reference = (
        "no official code; the loss follows Amadeus-AI/pytorch-single-center-loss @ a98f03d (golden vectors match), "
        "the network the paper's description with this project's choices"
    )
    choices = (
        "dct_block",
        "dct_batchnorm",
        "mining_channels",
        "mining_convs",
        "attention_reduction",
        "drop_rate",
    )

    def __init__(self, config: FreqSCLConfig | None = None, preprocess=None, **options):
        super().__init__(config, preprocess, **options)
        c = self.config
        self.encoder = build_encoder()
        self.mining = FrequencyMining(3 * c.dct_block**2, c)
        self.fusion = nn.Sequential(
            nn.Conv2d(728 + c.mining_channels, 728, 1, bias=False), nn.BatchNorm2d(728), nn.ReLU(inplace=True)
        )
        self.dropout = nn.Dropout(c.drop_rate)
        self.embed = nn.Linear(2048, c.embedding_dim)
        self.fc = nn.Linear(c.embedding_dim, c.num_classes)
        self.centre = nn.Parameter(torch.randn(c.embedding_dim))  # the single-center loss's learnable centre C
        self.register_buffer("dct", dct_matrix(c.dct_block), persistent=False)

    def load_pretrained(self, path: str) -> None:
        load_imagenet_weights(self.encoder, path)

    def frequency_channels(self, x: torch.Tensor) -> torch.Tensor:
        """YCbCr block DCT of the normalised input: 8-bit levels centred on 0, sides zero-padded to whole blocks."""
        rgb = self.preprocess.denormalise(x)
        matrix = torch.tensor(_YCBCR, device=x.device, dtype=rgb.dtype)
        centre = torch.tensor((0.5, 0.0, 0.0), device=x.device, dtype=rgb.dtype).view(1, 3, 1, 1)  # Y in [0, 1]
        ycbcr = (torch.einsum("ck,bkhw->bchw", matrix, rgb) - centre) * 255
        return block_dct(pad_to_multiple(ycbcr, self.config.dct_block), self.dct)

    def forward(self, x: torch.Tensor) -> DetectorOutput:
        rgb = run_layers(self.encoder, x, "conv1", "block3")
        with torch.autocast(x.device.type, enabled=False):  # the DCT coefficients span 0..2040: float32
            coefficients = self.frequency_channels(x.float())
        mined = self.mining(coefficients, tuple(rgb.shape[-2:]))
        features = run_layers(self.encoder, self.fusion(torch.cat([rgb, mined], dim=1)), "block4")
        embedding = self.embed(self.dropout(F.adaptive_avg_pool2d(features, 1).flatten(1)))
        return DetectorOutput(self.fc(embedding), {}, {"embedding": embedding})

    def loss(self, output: DetectorOutput, images: torch.Tensor, labels: torch.Tensor, cfg: FreqSCLLoss):
        classification = classification_loss(output.logits, labels)
        centre = single_center_loss(output.aux["embedding"], self.centre, labels, cfg.margin)
        total = classification + cfg.lambda_sc * centre
        return {"total": total, "classification": classification, "single_center": centre}
