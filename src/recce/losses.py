"""Loss functions of the detectors; RECCE's objective: flooded classification + reconstruction + metric learning.

RECCE's maths as in the official trainer (spec: recce.md §2.1); masks are built with tensor ops so no step
synchronises with the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

RECONSTRUCTION_TARGETS = ("real", "all")


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits for a one-logit head, cross-entropy for a two-logit head (labels: 0 real, 1 fake)."""
    logits = logits.float()
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits[:, 0], labels.float())
    return F.cross_entropy(logits, labels.long())


def flood(loss: torch.Tensor, level: float) -> torch.Tensor:
    """Flooding (Ishida et al., 2020): |L - b| + b keeps the training loss from going below b."""
    return torch.abs(loss - level) + level if level else loss


def metric_loss(similarities: tuple[torch.Tensor, ...], labels: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Sum over scales of max(0, 1 - mean S[real, real'] + mean S[real, fake]); fake-fake pairs are ignored."""
    fake = labels.bool()
    real = ~fake
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    real_pairs = (real[:, None] & real[None, :] & ~eye).float()
    mixed_pairs = (fake[:, None] ^ fake[None, :]).float()
    total = labels.new_zeros((), dtype=torch.float32)
    for s in similarities:
        s = s.float()
        pull = (s * real_pairs).sum() / (real_pairs.sum() + eps)
        push = (s * mixed_pairs).sum() / (mixed_pairs.sum() + eps)
        total = total + torch.clamp(1 - pull + push, min=0)
    return total


def reconstruction_loss(
    reconstruction: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, target: str = "real"
) -> torch.Tensor:
    """Mean |x_hat - x| over the real images (0 when there is none), or over all images for target='all'."""
    error = torch.abs(reconstruction.float() - images.float()).flatten(1).mean(1)
    if target == "all":
        return error.mean()
    real = (labels == 0).float()
    return (error * real).sum() / torch.clamp(real.sum(), min=1)


@dataclass(frozen=True)
class RecceLoss:
    """total = |L_cls - b| + b + lambda_reconstruction * L_r + lambda_metric * L_m; RECCE's `Loss` configuration.

    `reconstruct="all"` and `lambda_metric=0` give the ablations of seed Table 1.
    """

    lambda_reconstruction: float = 0.1  # weight of the reconstruction loss on real faces
    lambda_metric: float = 0.1  # 0 switches the metric-learning loss off (seed Table 1 (b))
    flooding: float = 0.04  # flooding level b of the classification loss (0: off)
    reconstruct: str = "real"  # real | all (seed Table 1 (a))

    def __post_init__(self):
        if self.reconstruct not in RECONSTRUCTION_TARGETS:
            raise ValueError(
                f"reconstruct must be one of {', '.join(RECONSTRUCTION_TARGETS)}, got {self.reconstruct!r}"
            )

    def __call__(self, output: Any, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Terms of a RECCE output (`maps["reconstruction"]`, `aux["similarities"]`)."""
        classification = classification_loss(output.logits, labels)
        flooded = flood(classification, self.flooding)
        reconstruction = reconstruction_loss(output.maps["reconstruction"], images, labels, self.reconstruct)
        metric = metric_loss(output.aux["similarities"], labels)
        total = flooded + self.lambda_reconstruction * reconstruction + self.lambda_metric * metric
        return {
            "total": total,
            "classification": classification,
            "flooded": flooded,
            "reconstruction": reconstruction,
            "metric": metric,
        }
