"""The paper-recipe configs and engine rules follow the official code (issue 10, items 2, 3, 4, 6 and 9)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from media import write_tiny_manifest

from recce.engine.config import load_config
from recce.engine.runtime import resolve_amp
from recce.engine.train import Trainer, _lr_lambda, is_better

CONFIGS = Path(__file__).parents[1] / "configs"
# The official loaders: FF++ (all methods or one) and Celeb-DF balance real and fake; DFDC and WildDeepfake do not.
OFFICIAL_BALANCE = {
    "ffpp_c23": True,
    "ffpp_c40": True,
    "ffpp_c23_deepfakes": True,
    "ffpp_c23_face2face": True,
    "ffpp_c23_faceswap": True,
    "ffpp_c23_neuraltextures": True,
    "celebdf": True,
    "dfdc": False,
    "wilddeepfake": False,
    "ablation_reconstruct_all": False,
    "ablation_no_metric": False,
    "ablation_sum": False,
    "ablation_concat": False,
    "ablation_nonlocal": False,
    "ablation_single_scale": False,
}


def test_every_recce_config_is_covered() -> None:
    assert {p.stem for p in (CONFIGS / "recce").glob("*.yaml")} == set(OFFICIAL_BALANCE)


@pytest.mark.parametrize("name", sorted(OFFICIAL_BALANCE))
def test_class_balancing_follows_the_official_loader(name: str) -> None:
    path = CONFIGS / "recce" / f"{name}.yaml"
    assert "balance:" in path.read_text(), f"{path} must state its balancing explicitly"
    assert load_config(path).data.balance is OFFICIAL_BALANCE[name]


@pytest.mark.parametrize(("name", "epochs"), [("celebdf", 10), ("dfdc", 3)])
def test_step_schedule_in_epochs_resolved_from_the_extracted_data(tmp_path: Path, name: str, epochs: int) -> None:
    manifest_path = write_tiny_manifest(tmp_path, 32)
    overrides = [
        f"data.manifest={manifest_path}",
        "data.datasets=null",
        "data.size=32",
        "data.workers=0",
        "model.pretrained=null",
        "train.batch_size=4",
        f"train.out={tmp_path / 'run'}",
    ]
    config = load_config(CONFIGS / "recce" / f"{name}.yaml", overrides)
    assert config.optim.step_epochs == epochs
    trainer = Trainer(config, progress=False)
    try:
        # 32 training frames (16 real, 16 fake): batch 4 gives 8 batches an epoch, balanced or not.
        assert trainer.sampler.batches_per_epoch() == 8
        assert trainer.step_size == epochs * 8
        assert f"every {epochs * 8} iterations" in (tmp_path / "run" / "train.log").read_text()
    finally:
        trainer.close()


def test_model_selection_is_the_official_accuracy_rule() -> None:
    assert load_config(CONFIGS / "recce" / "ffpp_c23.yaml").train.select_metric == "acc"
    assert is_better(0.9, 0.9, "acc")  # a tie goes to the later checkpoint, as the official `>=`
    assert is_better(0.2, 0.2, "log_loss") and not is_better(0.3, 0.2, "log_loss")
    assert not is_better(0.8, 0.9, "acc") and is_better(0.5, None, "auc")
    assert not is_better(float("nan"), None, "auc")


def test_paper_configs_train_in_the_official_fp16() -> None:
    for name in ("ffpp_c23", "celebdf", "dfdc", "wilddeepfake"):
        assert load_config(CONFIGS / "recce" / f"{name}.yaml").train.amp == "fp16", name
    assert resolve_amp("fp16", torch.device("cuda")) == "fp16"
    assert resolve_amp("fp16", torch.device("cpu")) == "none"  # a GPU recipe: the CPU runs it in fp32
    assert resolve_amp("bf16", torch.device("cuda")) == "bf16"  # bf16 stays an option


def test_warm_up_delays_every_step_decay() -> None:
    optim = load_config(CONFIGS / "recce" / "ffpp_c23.yaml", ["optim.warmup_steps=100"]).optim
    factor = _lr_lambda(optim, step_size=1000)
    assert factor(0) == pytest.approx(0.01) and factor(99) == 1.0
    # The first decay comes step_size iterations after the warm-up ends, not at step_size.
    assert factor(1000) == 1.0 and factor(1099) == 1.0
    assert factor(1100) == 0.5 and factor(2099) == 0.5 and factor(2100) == 0.25
