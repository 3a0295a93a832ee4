"""A shortened `recce demo` end to end: synthetic data, CPU training, evaluation, report, usable checkpoint."""

from __future__ import annotations

import json

from recce import checkpoints
from recce.cli import main


def test_short_demo_writes_report_and_a_detect_ready_checkpoint(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--steps", "6", "--identities", "24", "--size", "48", "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "held-out AUC on the manipulations recce trained on:" in printed
    assert "its scores on real media mean nothing" in printed and "recce weights" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert 0.0 <= summary["within_method_auc"] <= 1.0
    methods = {row["method"]: row["seen in training"] for row in summary["per_method"]}
    assert methods["expression"].startswith("no") and methods["faceswap"] == "yes"
    for name in ("report.md", "evaluation/roc.png", "evaluation/metrics.json", "evaluation_seen/roc.png"):
        assert (out / name).is_file(), name
    assert list((out / "masks").glob("*.png"))
    model = checkpoints.load(out / "recce-demo.safetensors")
    assert model.name == "recce" and model.preprocess.input_size == 48
    provenance = checkpoints.read_metadata(out / "recce-demo.safetensors")["provenance"]
    assert provenance["trained_on"] == ["synthetic"] and "not for real media" in provenance["purpose"]
    assert provenance["train_config"]["train"]["select_metric"] == "log_loss"
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    assert size < 100 * 2**20, f"the demo folder holds {size / 2**20:.0f} MB"
    assert not (out / "run" / "last.pt").exists()
    assert "Within-method AUC" in (out / "report.md").read_text()
