"""RECCE computes exactly what the official implementation computes (golden vectors at 299x299)."""

from __future__ import annotations

import pytest
import torch
from conftest import require_reference
from safetensors.torch import load_file

from recce.checkpoints import from_official
from recce.losses import RecceLoss

TOL = 1e-4


@pytest.fixture(scope="module")
def golden(reference_dir):
    return load_file(str(require_reference(reference_dir / "recce_official_golden.safetensors")))


@pytest.fixture(scope="module")
def official_state(golden):
    return {"model": {k.removeprefix("state_dict."): v for k, v in golden.items() if k.startswith("state_dict.")}}


def _check(output, golden, mode):
    assert output.logits.shape == golden[f"{mode}.logits"].shape
    assert (output.logits - golden[f"{mode}.logits"]).abs().max() < TOL
    assert (output.reconstruction - golden[f"{mode}.recons"]).abs().max() < TOL
    assert (torch.stack(output.similarities) - golden[f"{mode}.contra"]).abs().max() < TOL


def test_eval_outputs_match_official(golden, official_state):
    model = from_official(official_state)
    assert model.config.num_classes == 1
    with torch.no_grad():
        _check(model(golden["input"]), golden, "eval")


def test_train_outputs_and_losses_match_official(golden, official_state):
    model = from_official(official_state, drop_rate=0.0, input_noise_std=0.0).train()
    output = model(golden["input"])
    _check(output, golden, "train")
    losses = RecceLoss(lambda_reconstruction=0.1, lambda_metric=0.1, flooding=0.04)(
        output, golden["input"], golden["labels"]
    )
    for name in ("classification", "flooded", "reconstruction", "metric", "total"):
        assert abs(losses[name].item() - golden[f"train.loss.{name}"].item()) < TOL, name
