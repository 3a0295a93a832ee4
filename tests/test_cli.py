"""The command line a newcomer meets: fast help without torch, --version, defaults shown, discoverable configuration,
resume from a run folder, and honest warnings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from media import moving_face_frames, write_face_video, write_frame_folder, write_tiny_manifest

from recce import __version__
from recce.cli import COMMANDS, main

CONFIG = str(Path(__file__).parents[1] / "configs" / "recce" / "ffpp_c23.yaml")


def _imports(*argv: str) -> set[str]:
    """Modules a fresh interpreter has imported after running `recce ARGV`."""
    code = (
        "import sys\nfrom recce.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "print('\\n'.join(sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def test_help_and_manifest_commands_do_not_import_torch(tmp_path):
    assert "torch" not in _imports("--help")
    manifest_path = write_tiny_manifest(tmp_path, 8)
    assert "torch" not in _imports("manifest", "info", str(manifest_path))
    assert "torch" in _imports("models")  # a command that needs it still gets it


def test_extraction_with_haar_and_its_rerun_do_not_import_torch(tmp_path):
    """torch costs about 0.9 GB of memory to import: a Haar extraction, and above all a rerun over a large finished
    output with nothing left to do, must not pay it."""
    root = tmp_path / "data"
    write_face_video(root / "real" / "a.mp4", seed=1)
    frames, _ = moving_face_frames(2, photo="grace_hopper", seed=2)
    write_frame_folder(root / "fake" / "b", frames, ["1.png", "2.png"])
    argv = ("extract", "folder", "--root", str(root), "--out", str(tmp_path / "out"), "--face-detector", "haar")
    assert "torch" not in _imports(*argv, "--frames", "2", "--no-progress")
    assert len(pd.read_parquet(tmp_path / "out" / "manifest.parquet")) == 4
    assert "torch" not in _imports(*argv, "--frames", "2", "--no-progress")


def test_version_and_defaults_in_help(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"recce {__version__}"
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 1000)" in text and "blur" in text and "pixelation_nearest" in text
    assert set(COMMANDS) >= {"train", "detect", "models", "export", "serve"}


def test_show_config_lists_every_key_with_default_and_meaning(capsys):
    assert main(["train", "--config", CONFIG, "--show-config", "train.steps=10"]) == 0
    lines = capsys.readouterr().out.splitlines()
    by_key = {line.split(" = ")[0]: line for line in lines}
    assert "(default 90000)" in by_key["train.steps"] and "training iterations" in by_key["train.steps"]
    assert "graph | sum | concat | nonlocal" in by_key["model.aggregation"]
    assert "data.size" in by_key and "loss.lambda_metric" in by_key


def test_resume_needs_only_the_run_folder(tmp_path, capsys):
    manifest_path = write_tiny_manifest(tmp_path, 32)
    run = tmp_path / "run"
    overrides = [
        f"data.manifest={manifest_path}",
        "data.size=32",
        "data.workers=0",
        "data.datasets=null",
        "data.compressions=null",
        "model.pretrained=null",
        "train.batch_size=4",
        "train.steps=2",
        "train.log_every=1",
        "train.val_every=2",
        "train.checkpoint_every=1",
        f"train.out={run}",
    ]
    assert main(["train", "--config", CONFIG, *overrides, "--stop-after", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"recce train --resume {run}" in out
    assert "from random initialisation" in (run / "train.log").read_text()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert "finished at step 2" in capsys.readouterr().out
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[0] == 1 and steps[-1] == 2
    assert main(["train", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_missing_imagenet_weights_say_where_to_get_them(tmp_path, capsys):
    manifest_path = write_tiny_manifest(tmp_path, 32)
    args = ["train", "--config", CONFIG, f"data.manifest={manifest_path}", "data.datasets=null"]
    args += ["data.compressions=null", f"model.pretrained={tmp_path / 'absent.pth'}", f"train.out={tmp_path / 'r'}"]
    assert main(args) == 2
    message = capsys.readouterr().err
    assert "absent.pth: file not found" in message and "v0.1-cadene" in message
    assert "model.pretrained=null" in message and message.count("\n") == 1


def test_train_takes_the_config_file_as_its_first_argument(capsys):
    """`recce train configs/x.yaml key=value` reads like --config configs/x.yaml; two config files are refused."""
    assert main(["train", CONFIG, "data.size=64", "--show-config"]) == 0
    as_positional = capsys.readouterr().out
    assert main(["train", "--config", CONFIG, "data.size=64", "--show-config"]) == 0
    assert capsys.readouterr().out == as_positional
    assert main(["train", "data.size=64", "--show-config"]) == 0
    assert capsys.readouterr().out != as_positional  # the file was read: the engine's bare defaults differ
    assert main(["train", "--config", CONFIG, CONFIG, "--show-config"]) == 2
    assert "two config files" in capsys.readouterr().err
