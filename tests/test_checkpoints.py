"""Checkpoints: our safetensors round trip, official / DeepfakeBench import, clear errors, no unpickling."""

from __future__ import annotations

import dataclasses
import json

import pytest
import timm
import torch
from safetensors.torch import save_file

from recce import __version__, checkpoints
from recce.cli import main
from recce.detectors import Preprocess, create_detector
from recce.detectors.recce import Recce
from recce.detectors.xception import Xception

SMALL = torch.rand(2, 3, 64, 64) * 2 - 1


class _Payload:
    """An arbitrary pickled object: loading it would execute code, so it must be refused."""


def _official_state(model: Recce) -> dict[str, torch.Tensor]:
    """What the official code saves: our weights plus timm's unused 1000-way head."""
    state = dict(model.state_dict())
    state["encoder.fc.weight"] = torch.randn(1000, 2048)
    state["encoder.fc.bias"] = torch.randn(1000)
    return state


def _same_function(a, b):
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(SMALL).logits, b.eval()(SMALL).logits)


@pytest.mark.parametrize("model", [Recce(aggregation="nonlocal", multi_scale=False), Xception(num_classes=2)])
def test_round_trip_rebuilds_the_model(tmp_path, model):
    model.preprocess = Preprocess(64, mean=(0.4, 0.5, 0.6), std=(0.25, 0.25, 0.25))
    path = checkpoints.save(model, tmp_path / "m.safetensors", provenance={"step": 7})
    loaded = checkpoints.load(path)
    assert type(loaded) is type(model) and loaded.config == model.config
    assert loaded.preprocess == model.preprocess
    meta = checkpoints.read_metadata(path)
    assert meta["provenance"] == {"step": 7} and meta["detector"] == model.name and meta["version"] == __version__
    assert meta["head"] == ("sigmoid" if model.config.num_classes == 1 else "softmax")
    _same_function(model, loaded)


def test_first_format_files_still_load(tmp_path):
    """Files written before the detector registry (format recce-forgery/1) load with their input size."""
    model = Recce(aggregation="sum")
    path = tmp_path / "old.safetensors"
    metadata = {
        "format": "recce-forgery/1",
        "architecture": "recce",
        "config": json.dumps(dataclasses.asdict(model.config)),
        "extra": json.dumps({"input_size": 96, "step": 3}),
    }
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=metadata)
    loaded = checkpoints.load(path)
    assert loaded.config.aggregation == "sum" and loaded.preprocess == Preprocess(96)
    assert checkpoints.read_metadata(path)["provenance"] == {"input_size": 96, "step": 3}
    _same_function(model, loaded)


def test_official_formats_import(tmp_path):
    model = Recce()
    official = _official_state(model)
    variants = {
        "official.bin": {"model": {f"module.{k}": v for k, v in official.items()}, "step": 10},
        "bare.pth": official,
        "deepfakebench.pth": {
            **{f"model.{k}": v for k, v in Recce(num_classes=2).state_dict().items()},
            "backbone.last_linear.weight": torch.randn(2, 2048),
        },
    }
    for name, payload in variants.items():
        torch.save(payload, tmp_path / name)
    _same_function(model, checkpoints.from_official(tmp_path / "official.bin"))
    _same_function(model, checkpoints.from_official(tmp_path / "bare.pth", num_classes=1))
    assert checkpoints.from_official(tmp_path / "deepfakebench.pth").config.num_classes == 2
    with pytest.raises(checkpoints.CheckpointError, match="num_classes=2"):
        checkpoints.from_official(tmp_path / "bare.pth", num_classes=2)


def test_convert_command_then_load(tmp_path, capsys):
    model = Recce()
    torch.save({"model": _official_state(model)}, tmp_path / "official_best.bin")
    assert main(["convert", str(tmp_path / "official_best.bin"), str(tmp_path / "mine.safetensors")]) == 0
    assert "wrote" in capsys.readouterr().out
    _same_function(model, checkpoints.load(tmp_path / "mine.safetensors"))


def test_bad_files_get_one_clear_line(tmp_path, capsys):
    text = tmp_path / "notes.bin"
    text.write_text("not a checkpoint\n")
    good = tmp_path / "good.bin"
    torch.save({"model": _official_state(Recce())}, good)
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(good.read_bytes()[:100_000])
    other = tmp_path / "resnet.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), other)
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": _Payload()}, pickled)
    expectations = {
        text: "not a PyTorch checkpoint",
        truncated: "truncated",
        other: "1000 outputs; RECCE checkpoints have 1 or 2",
        pickled: "refused to load",
        tmp_path / "missing.bin": "not found",
    }
    for path, message in expectations.items():
        with pytest.raises(checkpoints.CheckpointError, match=message) as info:
            checkpoints.from_official(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
        assert main(["convert", str(path), str(tmp_path / "out.safetensors")]) == 2
        assert capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "out.safetensors").exists()


def test_wrong_architecture_lists_key_problems(tmp_path):
    state = _official_state(Recce())
    del state["reasoning.reproject.0.weight"]
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(checkpoints.CheckpointError, match="1 missing keys .*1 unexpected keys"):
        checkpoints.from_official(state)
    with pytest.raises(checkpoints.CheckpointError, match="without recce metadata|not a recce"):
        checkpoints.load(_plain_safetensors(tmp_path))


def _plain_safetensors(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    return path


def test_imagenet_xception_weights_load_from_a_local_file(tmp_path):
    source = timm.create_model("legacy_xception", pretrained=False)
    path = tmp_path / "xception-43020ad28.pth"
    torch.save(source.state_dict(), path)
    model = create_detector("recce", pretrained=str(path))
    torch.testing.assert_close(model.encoder.block7.rep[1].pointwise.weight, source.block7.rep[1].pointwise.weight)
    with pytest.raises(checkpoints.CheckpointError, match="not ImageNet Xception"):
        torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
        create_detector("xception", pretrained=str(tmp_path / "bad.pth"))
