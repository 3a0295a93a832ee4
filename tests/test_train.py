"""Training engine: bad configs fail early, loss improves, resume reproduces the run, torchrun with gloo works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from media import write_tiny_manifest

from recce import checkpoints
from recce.cli import main
from recce.data import manifest
from recce.engine.config import ConfigError, load_config
from recce.engine.sampler import EpochSampler
from recce.engine.train import load_datasets, train

SIZE = 32


@pytest.fixture(scope="module")
def tiny_manifest(tmp_path_factory) -> Path:
    return write_tiny_manifest(tmp_path_factory.mktemp("tiny"), SIZE)


def _config(tmp_path: Path, manifest_path: Path, *extra: str):
    overrides = [
        f"data.manifest={manifest_path}",
        f"data.size={SIZE}",
        "data.workers=0",
        "model.pretrained=null",
        "train.batch_size=8",
        "train.val_batch_size=16",
        "train.log_every=1",
        f"train.out={tmp_path / 'run'}",
        "optim.lr=0.001",
        "data.datasets=null",
        "data.compressions=null",
        *extra,
    ]
    return load_config(Path(__file__).parents[1] / "configs" / "recce" / "ffpp_c23.yaml", overrides)


def _losses(run: Path) -> list[tuple[int, float]]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss/total"]) for r in lines if "loss/total" in r]


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.manifest=/nonexistent/manifest.parquet", "manifest not found"),
        ("data.train_split=nosuchsplit", "split 'nosuchsplit' is empty"),
        ("data.methods=[checker]", None),  # valid: keeps reals and the named method
        ("train.bogus=1", "unknown key train.bogus"),
        ("data.datasets=[toy] data.val_split=train", "val_split equals"),
        ("optim.step_size=0", "optim.step_size must be an integer of at least 1"),
        ("train.amp=fp32", "train.amp must be one of"),
        ("model.aggregation=bogus", "model.aggregation must be one of"),
        ("loss.reconstruct=everything", "loss.reconstruct must be one of"),
    ],
)
def test_bad_configuration_fails_before_training(tmp_path, tiny_manifest, override, message):
    args = override.split()
    if message is None:
        assert _config(tmp_path, tiny_manifest, *args).data.methods == ["checker"]
        return
    with pytest.raises(ConfigError, match=message):
        train(_config(tmp_path, tiny_manifest, *args), progress=False)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_one_class_split_is_rejected_with_a_message(tmp_path, tiny_manifest, capsys):
    frame = manifest.read(tiny_manifest)
    frame.loc[frame["split"] == "val", "label"] = 0
    one_class = manifest.write(frame.drop(columns="abspath"), tiny_manifest.parent / "one_class.parquet")
    code = main(["train", "--no-progress", *[f"{a}" for a in _overrides(tmp_path, one_class)]])
    err = capsys.readouterr().err
    assert code == 2 and "split 'val' has only one class" in err and err.count("\n") == 1


def _overrides(tmp_path, manifest_path):
    return [f"data.manifest={manifest_path}", f"data.size={SIZE}", "data.workers=0", f"train.out={tmp_path}/run"]


def test_training_improves_loss_and_exports_best(tmp_path, tiny_manifest):
    config = _config(tmp_path, tiny_manifest, "train.steps=24", "train.val_every=12", "train.checkpoint_every=12")
    result = train(config, progress=False)
    losses = [loss for _, loss in _losses(result.out)]
    assert len(losses) == 24 and result.finished
    assert np.mean(losses[-4:]) < np.mean(losses[:4])
    model = checkpoints.load(result.out / "best.safetensors")
    assert model.preprocess.input_size == SIZE
    assert result.best["metric"] == "acc" and result.best["step"] in (12, 24)
    for name in ("final.safetensors", "last.pt", "train.log", "config.yaml", "summary.json"):
        assert (result.out / name).is_file(), name
    assert any((result.out / "tensorboard").iterdir())


def test_resume_reproduces_the_uninterrupted_run(tmp_path, tiny_manifest):
    settings = ("train.steps=7", "train.checkpoint_every=3", "train.val_every=100", "data.val_split=null")
    straight = train(_config(tmp_path / "a", tiny_manifest, *settings), progress=False)
    first = train(_config(tmp_path / "b", tiny_manifest, *settings), progress=False, stop_after=4)
    assert not first.finished and first.step == 4
    with open(first.out / "metrics.jsonl", "a") as log:  # a killed run may have logged past its last checkpoint
        log.write(json.dumps({"step": 5, "loss/total": 99.0}) + "\n")
    resumed = train(_config(tmp_path / "b", tiny_manifest, *settings), resume=True, progress=False)
    assert resumed.finished
    expected, got = _losses(straight.out), _losses(resumed.out)
    assert [s for s, _ in got] == list(range(1, 8))
    np.testing.assert_allclose([v for _, v in got], [v for _, v in expected], rtol=1e-6, atol=1e-7)
    with pytest.raises(ConfigError, match="already holds a run"):
        train(_config(tmp_path / "b", tiny_manifest, *settings), progress=False)


def test_validation_limit_keeps_both_classes(tmp_path, tiny_manifest):
    _, val_set = load_datasets(_config(tmp_path, tiny_manifest, "data.val_limit=3"))
    assert len(val_set) <= 4 and set(val_set.labels) == {0, 1}


def test_sampler_balances_and_resumes_mid_epoch():
    labels = np.array([0] * 6 + [1] * 18)
    sampler = EpochSampler(labels, batch_size=4, balance=True, seed=1)
    rows = [r for r, _ in sampler]
    assert len(rows) == 12 and sum(labels[rows]) == 6  # all 6 reals and 6 of 18 fakes
    sampler.set_position(0, start_batch=2)
    assert [r for r, _ in sampler] == rows[8:]
    shards = [list(EpochSampler(labels, 2, seed=1, rank=r, world_size=2)) for r in range(2)]
    assert not set(shards[0]) & set(shards[1]) and len(shards[0]) == len(shards[1])


def test_each_rank_draws_its_share_of_one_global_epoch_from_any_batch_on():
    """Rank r of W yields rows r, r + W, ... of the epoch's order, from batch b on: the global epoch is the same."""
    labels = np.random.default_rng(0).integers(0, 2, 203)
    for world in (1, 2, 3):
        whole = EpochSampler(labels, 5, seed=7, world_size=world)
        rows, seeds = whole.epoch_order(3)
        for rank in range(world):
            sampler = EpochSampler(labels, 5, seed=7, rank=rank, world_size=world)
            for start in (0, 1, sampler.batches_per_epoch() - 1):
                sampler.set_position(3, start)
                drawn = list(sampler)
                share_rows, share_seeds = rows[rank::world][start * 5 :], seeds[rank::world][start * 5 :]
                expected = list(zip(share_rows.tolist(), share_seeds.tolist(), strict=True))
                assert drawn == expected and len(drawn) == len(sampler)
                assert all(type(r) is int and type(s) is int for r, s in drawn)


def test_torchrun_two_processes_with_gloo(tmp_path, tiny_manifest):
    out = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29517",
        "-m",
        "recce",
        "train",
        "--no-progress",
        f"data.manifest={tiny_manifest}",
        f"data.size={SIZE}",
        "data.workers=0",
        "model.pretrained=null",
        "train.batch_size=4",
        "train.steps=3",
        "train.val_every=3",
        "train.log_every=1",
        "train.checkpoint_every=3",
        "train.device=cpu",
        f"train.out={out}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert (out / "last.pt").is_file() and (out / "best.safetensors").is_file()
    assert len(list(out.glob("*.pt"))) == 1
    assert [s for s, _ in _losses(out)] == [1, 2, 3]
