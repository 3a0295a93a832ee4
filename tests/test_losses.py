"""RecceLoss: the official maths, finite on degenerate batches, BCE vs CE heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from recce.detectors.recce import RecceOutput
from recce.losses import RecceLoss, metric_loss, reconstruction_loss


def _output(batch: int, classes: int = 1) -> RecceOutput:
    sims = tuple(torch.rand(batch, batch) for _ in range(3))
    return RecceOutput(
        torch.randn(batch, classes), {"reconstruction": torch.rand(batch, 3, 8, 8) * 2 - 1}, {"similarities": sims}
    )


def test_metric_loss_by_hand():
    s = torch.tensor([[1.0, 0.8, 0.3], [0.8, 1.0, 0.1], [0.3, 0.1, 1.0]])
    labels = torch.tensor([0, 0, 1])
    # real-real ordered pairs: (0,1),(1,0) -> 0.8; real-fake both orders: 0.3, 0.1, 0.3, 0.1 -> 0.2
    expected = 1 - 0.8 + 0.2
    assert abs(metric_loss((s,), labels).item() - expected) < 1e-5
    # fake-fake pairs do not count
    labels_ff = torch.tensor([1, 1, 0])
    s_ff = s.clone()
    s_ff[0, 1] = s_ff[1, 0] = 0.0
    assert abs(metric_loss((s_ff,), labels_ff).item() - metric_loss((s,), labels_ff).item()) < 1e-6


def test_reconstruction_uses_real_images_only():
    images = torch.zeros(3, 3, 4, 4)
    recon = torch.stack([torch.full((3, 4, 4), v) for v in (0.5, 0.9, -0.25)])
    labels = torch.tensor([0, 1, 0])
    assert abs(reconstruction_loss(recon, images, labels).item() - (0.5 + 0.25) / 2) < 1e-6
    assert abs(reconstruction_loss(recon, images, labels, "all").item() - (0.5 + 0.9 + 0.25) / 3) < 1e-6
    assert reconstruction_loss(recon, images, torch.ones(3, dtype=torch.long)).item() == 0.0


def test_degenerate_batches_are_finite():
    loss = RecceLoss()
    images = torch.rand(4, 3, 8, 8)
    for labels in (torch.ones(4, dtype=torch.long), torch.zeros(4, dtype=torch.long), torch.tensor([1])):
        out = _output(len(labels))
        values = loss(out, images[: len(labels)], labels)
        assert all(torch.isfinite(v) for v in values.values())


def test_classification_heads_and_flooding():
    labels = torch.tensor([0, 1, 1, 0])
    out1 = _output(4, 1)
    losses = RecceLoss(flooding=0.04)(out1, torch.rand(4, 3, 8, 8), labels)
    bce = F.binary_cross_entropy_with_logits(out1.logits[:, 0], labels.float())
    torch.testing.assert_close(losses["classification"], bce)
    torch.testing.assert_close(losses["flooded"], (bce - 0.04).abs() + 0.04)
    out2 = _output(4, 2)
    ce = F.cross_entropy(out2.logits, labels)
    torch.testing.assert_close(RecceLoss()(out2, torch.rand(4, 3, 8, 8), labels)["classification"], ce)
