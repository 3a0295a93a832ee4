"""Freq-SCL: the single-center loss against the reference's golden vectors (this project's labels), the block DCT,
the network's shapes and its loss with the learnable centre."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import scipy.fft
import torch

from recce.detectors import DetectorConfigError, create_detector
from recce.detectors.base import Preprocess
from recce.detectors.freqscl import FreqSCL, FreqSCLLoss, single_center_loss
from recce.detectors.layers.frequency import block_dct, dct_matrix
from recce.engine.config import load_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIGS = Path(__file__).parents[1] / "configs" / "freqscl"

# golden case -> the features it used and this project's labels (0 = real = natural)
CASES = {
    "active.mixed": ("active", "mixed"),
    "inactive.mixed": ("inactive", "mixed"),
    "active.all_natural": ("active", "real"),
    "active.all_manipulated": ("active", "fake"),
}


@pytest.fixture(scope="module")
def golden(reference_dir):
    return safetensors.torch.load_file(str(reference_dir / "baselines" / "single_center_loss_golden.safetensors"))


def test_golden_labels_are_the_reference_convention_flipped(golden):
    assert torch.equal(golden["scl.labels_reference"], 1 - golden["scl.labels_project"])
    assert golden["scl.labels_project"].tolist() == [0, 1, 0, 1]


@pytest.mark.parametrize("case", list(CASES))
def test_single_center_loss_and_gradients_match_the_reference(golden, case):
    features_key, labels_kind = CASES[case]
    labels = {
        "mixed": golden["scl.labels_project"],
        "real": torch.zeros(4, dtype=torch.long),
        "fake": torch.ones(4, dtype=torch.long),
    }[labels_kind]
    features = golden[f"scl.{features_key}.features"].clone().requires_grad_()
    centre = golden["scl.C"].clone().requires_grad_()
    assert features.shape[1] == int(golden["scl.D"])
    loss = single_center_loss(features, centre, labels, float(golden["scl.m"]))
    loss.backward()
    torch.testing.assert_close(loss.reshape(1), golden[f"scl.{case}.loss"], rtol=0, atol=1e-5)
    torch.testing.assert_close(features.grad, golden[f"scl.{case}.grad_x"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(centre.grad, golden[f"scl.{case}.grad_C"], rtol=1e-4, atol=1e-5)


def test_single_center_loss_is_the_formula():
    """M_nat + max(M_nat − M_man + m√D, 0) with mean Euclidean (not squared) distances, on a hand-made case."""
    centre = torch.zeros(4)
    features = torch.tensor([[3.0, 4.0, 0, 0], [0, 0, 0, 1.0], [6.0, 8.0, 0, 0], [0, 0, 2.0, 0]])
    labels = torch.tensor([0, 1, 0, 1])  # natural distances 5 and 10, manipulated 1 and 2
    expected = 7.5 + max(7.5 - 1.5 + 0.3 * 2, 0)
    assert single_center_loss(features, centre, labels, 0.3).item() == pytest.approx(expected)
    far = features * torch.tensor([[0.1], [10.0], [0.1], [10.0]])  # manipulated far away: the hinge is off
    assert single_center_loss(far, centre, labels, 0.3).item() == pytest.approx(0.75)


def test_block_dct_groups_equal_frequencies_as_channels():
    x = torch.randn(2, 3, 16, 24, dtype=torch.float64)
    out = block_dct(x, dct_matrix(8, torch.float64))
    assert out.shape == (2, 192, 2, 3)
    blocks = x.numpy().reshape(2, 3, 2, 8, 3, 8)
    expected = scipy.fft.dctn(blocks, type=2, norm="ortho", axes=(3, 5))  # b, c, i, u, j, v
    expected = torch.from_numpy(np.ascontiguousarray(expected.transpose(0, 1, 3, 5, 2, 4)).reshape(2, 192, 2, 3))
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match="multiples of 8"):
        block_dct(torch.zeros(1, 3, 12, 16), dct_matrix(8))


@pytest.mark.parametrize("size, grid", [(64, 8), (299, 38)])
def test_frequency_channels_are_192_at_an_eighth(size, grid):
    model = FreqSCL(preprocess=Preprocess(input_size=size))
    grey = torch.zeros(1, 3, size, size)  # mid grey: Y, Cb and Cr all 0 once centred
    assert model.frequency_channels(grey).abs().max() < 1e-3
    channels = model.frequency_channels(torch.rand(1, 3, size, size) * 2 - 1)
    assert channels.shape == (1, 192, grid, grid)


@pytest.mark.parametrize("size", [64, 98, 224])  # 98 = 16·6 + 2: the mined grid is cropped to Xception's
def test_forward_gives_two_logits_and_the_embedding(size):
    model = FreqSCL(preprocess=Preprocess(input_size=size)).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, size, size) * 2 - 1)
    assert out.logits.shape == (1, 2) and out.aux["embedding"].shape == (1, 1000) and out.maps == {}


def test_loss_is_cross_entropy_plus_half_the_single_center_loss_and_trains_the_centre():
    model = FreqSCL(preprocess=Preprocess(input_size=64)).train()
    images, labels = torch.rand(4, 3, 64, 64) * 2 - 1, torch.tensor([0, 1, 0, 1])
    output = model(images)
    losses = model.loss(output, images, labels, FreqSCLLoss())
    ce = torch.nn.functional.cross_entropy(output.logits, labels)
    centre = single_center_loss(output.aux["embedding"], model.centre, labels, 0.3)
    torch.testing.assert_close(losses["total"], ce + 0.5 * centre)
    losses["total"].backward()
    assert model.centre.grad is not None and model.centre.grad.abs().sum() > 0
    assert "centre" in model.state_dict() and model.centre.shape == (1000,)


def test_every_structural_choice_is_a_config_field():
    fields = set(FreqSCL.Config.__dataclass_fields__)
    assert set(FreqSCL.choices) <= fields and FreqSCL.source == "re-implementation"
    with pytest.raises(DetectorConfigError, match="two-way"):
        create_detector("freqscl", num_classes=1)
    model = create_detector("freqscl", dct_block=4, mining_channels=32, mining_convs=1, embedding_dim=16)
    model.preprocess = Preprocess(input_size=64)
    assert model(torch.rand(2, 3, 64, 64) * 2 - 1).aux["embedding"].shape == (2, 16)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_configs_load_with_the_public_loss_defaults(path):
    config = load_config(path)
    assert config.model.name == "freqscl" and config.loss_config() == FreqSCLLoss(lambda_sc=0.5, margin=0.3)
    assert config.detector_config() == FreqSCL.Config()
    assert config.preprocess().input_size == (224 if path.stem == "wilddeepfake" else 299)
