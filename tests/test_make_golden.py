"""scripts/make_recce_golden.py: its argument checks, and its whole pipeline on a stand-in for the official code.

The stand-in checkout exposes the official API (`model/network/Recce.py` with `Recce` and `encoder_params`,
`loss/__init__.py` with `LOSSES`, `trainer/utils.py` with `exp_recons_loss` and `MLLoss`) on top of this
project's RECCE, so the script's own parts (training steps, float16 rounding, train-mode settings, the file's key
layout and metadata, the atomic write) are exercised end to end, and the parity tests, pointed at the result
through RECCE_REFERENCE_DIR, must pass. Parity with the real official code needs its checkout.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import safetensors
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "make_recce_golden.py"

STAND_IN = {
    "model/__init__.py": "",
    "model/network/__init__.py": "",
    "model/network/Recce.py": """
        from recce.detectors.recce import Recce as ProjectRecce

        encoder_params = {"xception": {"features": 2048, "init_op": None}}


        class Recce(ProjectRecce):
            def __init__(self, num_classes, drop_rate=0.2):
                super().__init__(num_classes=num_classes, drop_rate=drop_rate, input_noise_std=0.0)
                assert callable(encoder_params["xception"]["init_op"])  # the script replaced the downloading one
                self.loss_inputs = {}

            @staticmethod
            def add_white_noise(tensor, mean=0.0, std=1e-6):
                return tensor + 1e-3 * (2 * (tensor.new_ones(tensor.shape[0], 1, 1, 1).bernoulli_(0.5)) - 1)

            def forward(self, x):
                out = super().forward(self.add_white_noise(x) if self.training else x)
                self.loss_inputs = dict(recons=[out.reconstruction], contra=list(out.similarities))
                return out.logits
    """,
    "loss/__init__.py": """
        import torch.nn as nn

        LOSSES = {"binary_ce": nn.BCEWithLogitsLoss(), "cross_entropy": nn.CrossEntropyLoss()}
    """,
    "trainer/__init__.py": "raise ImportError('the trainer package needs training-only dependencies')",
    "trainer/utils.py": """
        from recce.losses import metric_loss, reconstruction_loss


        def exp_recons_loss(recons, x):
            images, labels = x
            return sum(reconstruction_loss(r, images, labels) for r in recons)


        class MLLoss:
            def __call__(self, contra, labels):
                return metric_loss(tuple(contra), labels)
    """,
}


def _load_script():
    spec = importlib.util.spec_from_file_location("make_recce_golden", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return _load_script()


def _stand_in(folder: Path) -> Path:
    for name, text in STAND_IN.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return folder


def _error(script, capsys, *argv: str) -> str:
    assert script.main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("make_recce_golden: ")
    return err


def test_argument_errors_are_one_line(script, tmp_path, capsys):
    assert "no such folder" in _error(script, capsys, str(tmp_path / "nowhere"))
    err = _error(script, capsys, str(tmp_path))
    assert "not a checkout of the official RECCE code" in err and "model/network/Recce.py" in err
    checkout = _stand_in(tmp_path / "RECCE")
    assert "--batch" in _error(script, capsys, str(checkout), "--batch", "3")
    assert "--batch" in _error(script, capsys, str(checkout), "--batch", "0")
    assert "--size" in _error(script, capsys, str(checkout), "--size", "16")
    assert "--steps" in _error(script, capsys, str(checkout), "--steps", "-1")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / script.GOLDEN_NAME).write_bytes(b"old")
    assert "--force" in _error(script, capsys, str(checkout), "--out", str(tmp_path / "out"))
    (tmp_path / "file").write_text("x")
    assert "not a folder" in _error(script, capsys, str(checkout), "--out", str(tmp_path / "file"))
    with pytest.raises(SystemExit):
        script.parse_args([])  # the checkout is required


def test_golden_file_from_a_stand_in_checkout_passes_the_parity_tests(tmp_path):
    checkout = _stand_in(tmp_path / "RECCE")
    out = tmp_path / "golden"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(
        [sys.executable, str(SCRIPT), str(checkout), "--out", str(out), "--size", "64", "--steps", "2"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert f"RECCE_REFERENCE_DIR={out}" in run.stdout
    path = out / "recce_official_golden.safetensors"
    golden = load_file(str(path))
    outputs = {k for k in golden if not k.startswith("state_dict.")}
    terms = ("classification", "flooded", "reconstruction", "metric", "total")
    assert outputs == {
        "input", "labels", "eval.logits", "eval.recons", "eval.contra", "train.logits", "train.recons",
        "train.contra", *(f"train.loss.{t}" for t in terms),
    }  # fmt: skip
    assert golden["input"].shape == (4, 3, 64, 64) and golden["labels"].tolist() == [0, 1, 0, 1]
    assert golden["eval.contra"].shape == (3, 4, 4) and golden["train.loss.total"].shape == (1,)
    assert golden["input"].min() >= -1 and golden["input"].max() <= 1
    state = {k: v for k, v in golden.items() if k.startswith("state_dict.")}
    assert {str(v.dtype) for v in state.values()} == {"torch.float16", "torch.int64"}
    assert golden["state_dict.encoder.bn1.num_batches_tracked"].item() == 2  # two training steps were taken
    assert (golden["eval.logits"] - golden["train.logits"]).abs().max() > 1e-4  # BatchNorm statistics differ
    with safetensors.safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    assert metadata["size"] == "64" and metadata["batch"] == "4" and metadata["flooding_b"] == "0.04"
    assert metadata["official_commit"] == "unknown"  # the stand-in is no git checkout
    keys = (out / "recce_official_state_dict_keys.txt").read_text().splitlines()
    assert len(keys) == len(state) + 1 and keys[1].split("\t")[1] in ("float16", "int64")
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]

    parity = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_parity.py")],
        capture_output=True, text=True, env={**env, "RECCE_REFERENCE_DIR": str(out)}, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert parity.returncode == 0, parity.stdout[-2000:]
    assert "2 passed" in parity.stdout


def test_parity_tests_skip_naming_the_variable_when_the_folder_is_absent(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        "RECCE_REFERENCE_DIR": str(tmp_path / "absent"),
    }
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_parity.py")],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0 and "2 skipped" in run.stdout
    assert "RECCE_REFERENCE_DIR" in run.stdout and "make_recce_golden.py" in run.stdout
