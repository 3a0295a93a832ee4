"""`recce weights` and the catalogue; `recce convert` recognising catalogued files by key layout or SHA-256."""

from __future__ import annotations

import json

import pytest
import safetensors
import torch

from recce import catalogue
from recce.catalogue import Catalogue, WeightsEntry, file_sha256, identify, layout_of, load_catalogue, parse_catalogue
from recce.cli import main
from recce.detectors import Preprocess, create_detector
from recce.detectors.layers.xception import build_encoder

PACKAGE_DETECTORS = ("recce", "xception", "rfm", "multiatt", "f3net", "freqscl", "addnet")


@pytest.fixture(scope="module")
def recce_state():
    torch.manual_seed(0)
    return {k: v.clone() for k, v in create_detector("recce").state_dict().items()}


@pytest.fixture(scope="module")
def xception_state():
    """timm legacy_xception names (the Cadene layout) without a head."""
    return build_encoder().state_dict()


def _small(*names: str) -> dict[str, torch.Tensor]:
    return {name: torch.zeros(2) for name in names}


def _deepfakebench_recce(recce_state):
    state = {f"model.{k}": v for k, v in recce_state.items() if not k.startswith("fc.")}
    state.update({"model.fc.weight": torch.randn(2, 2048) * 0.01, "model.fc.bias": torch.zeros(2)})
    state.update(
        {f"backbone.{k.removeprefix('encoder.')}": v for k, v in recce_state.items() if k.startswith("encoder.")}
    )
    return state


def _cadene(xception_state, outputs: int, prefix: str = "") -> dict[str, torch.Tensor]:
    state = {f"{prefix}{k}": v for k, v in xception_state.items()}
    state[f"{prefix}last_linear.weight"] = torch.zeros(outputs, 2048)
    state[f"{prefix}last_linear.bias"] = torch.zeros(outputs)
    return state


def _convert(tmp_path, capsys, *args: str) -> tuple[int, str, str]:
    code = main(["convert", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _provenance(path) -> dict:
    with safetensors.safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    return {"preprocess": json.loads(metadata["preprocess"]), **json.loads(metadata["provenance"])}


# --- the catalogue ------------------------------------------------------------------------------------------------


def test_catalogue_covers_every_detector_with_buildable_preprocessing():
    cat = load_catalogue()
    assert tuple(cat.detectors) == PACKAGE_DETECTORS
    assert {entry.detector for entry in cat.entries} <= set(PACKAGE_DETECTORS)
    for entry in cat.entries:
        Preprocess.from_dict(entry.preprocess)  # raises on a malformed size / mean / std
        assert entry.trained_on and entry.obtain and entry.licence and entry.convert_note, entry.id
    ids = {entry.id for entry in cat.entries}
    assert {"recce-authors-ffpp-c23", "recce-authors-ffpp-c40", "deepfakebench-recce", "rfm-authors-celebdf"} <= ids
    assert cat.entry("deepfakebench-recce").preprocess["input_size"] == 256
    assert cat.entry("deepfakebench-recce").file == "recce_best.pth"
    assert cat.entry("rfm-authors-dffd").preprocess["std"] == [0.25, 0.25, 0.25]


def test_catalogue_rejects_malformed_entries():
    good = load_catalogue().entries[0].to_dict()
    with pytest.raises(ValueError, match="unknown layout"):
        parse_catalogue({"weights": [{**good, "layout": "nope"}]}, "cat.yaml")
    with pytest.raises(ValueError, match="sha256"):
        parse_catalogue({"weights": [{**good, "sha256": "abc"}]}, "cat.yaml")
    with pytest.raises(ValueError, match="missing or unknown"):
        parse_catalogue({"weights": [{k: v for k, v in good.items() if k != "licence"}]}, "cat.yaml")
    with pytest.raises(ValueError, match="duplicate"):
        parse_catalogue({"weights": [good, good]}, "cat.yaml")


# --- key layouts --------------------------------------------------------------------------------------------------


def test_layouts_of_recce_files(recce_state):
    assert layout_of(recce_state) == "recce-official"
    assert layout_of({f"module.{k}": v for k, v in recce_state.items()}) == "recce-official"
    assert layout_of(_deepfakebench_recce(recce_state)) == "deepfakebench-recce"
    assert layout_of({f"model.{k}": v for k, v in recce_state.items()}) is None  # not DeepfakeBench's: no backbone


def test_layouts_of_xception_files(xception_state):
    assert layout_of(_cadene(xception_state, 2)) == "cadene-xception"
    assert layout_of(_cadene(xception_state, 2, "module.")) == "cadene-xception"
    assert layout_of(_cadene(xception_state, 1000)) == "xception-imagenet"
    timm_imagenet = {**xception_state, "fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}
    assert layout_of(timm_imagenet) == "xception-imagenet"
    deepfakebench = _cadene(xception_state, 2, "backbone.") | _small("backbone.adjust_channel.0.weight")
    assert layout_of(deepfakebench) == "deepfakebench-xception"
    assert layout_of({**xception_state, "fc.weight": torch.zeros(2, 2048)}) is None  # this project's own naming


def test_layouts_of_other_detectors_by_key_names_only():
    multiatt = _small(
        "net._conv_stem.weight", "net._blocks.0._depthwise_conv.weight", "attentions.conv_extract.weight",
        "texture_enhance.conv0.weight", "auxiliary_loss.feature_centers", "ensemble_classifier_fc.2.weight",
    )  # fmt: skip
    assert layout_of(multiatt) == "multiatt-official"
    assert layout_of({f"module.{k}": v for k, v in multiatt.items()}) == "multiatt-official"
    bench_multiatt = _small(
        "backbone.efficientnet._conv_stem.weight", "attention_generation.conv_extract.weight",
        "texture_enhance.conv0.weight", "projection_local.0.weight",
    )  # fmt: skip
    assert layout_of(bench_multiatt) == "deepfakebench-multiatt"
    port = _small(
        "FAD_head._DCT_all", "LFS_head._DCT_patch", "FAD_xcep.conv1.weight", "LFS_xcep.conv1.weight", "fc.weight"
    )
    assert layout_of(port) == "f3net-port"
    bench_f3net = _small(
        "FAD_head._DCT_all", "FAD_head.filters.0.base", "backbone.conv1.weight", "backbone.last_linear.weight"
    )
    assert layout_of(bench_f3net) == "deepfakebench-f3net"
    assert layout_of(_small("conv.weight", "fc.weight")) is None


def test_identify_prefers_a_known_sha256_over_the_layout(tmp_path, recce_state):
    path = tmp_path / "weights.bin"
    torch.save(_small("something.weight"), path)
    sha = file_sha256(path)
    entry = load_catalogue().entry("rfm-authors-celebdf")
    known = Catalogue(detectors={}, entries=(WeightsEntry(**{**entry.__dict__, "id": "by-hash", "sha256": sha}),))
    found = identify(_small("something.weight"), sha, catalogue=known)
    assert found.by_sha256 and found.layout is None and [e.id for e in found.entries] == ["by-hash"]
    assert found.detectors == ("rfm",)
    assert identify(_small("something.weight"), "0" * 64, catalogue=known).entries == ()
    assert identify(_small("something.weight"), sha, detector="recce", catalogue=known).entries == ()
    by_layout = identify(recce_state, "0" * 64)
    assert {e.id for e in by_layout.entries} == {"recce-authors-ffpp-c23", "recce-authors-ffpp-c40"}
    assert identify(recce_state, detector="xception").entries == ()


# --- recce weights --------------------------------------------------------------------------------------------------


def test_weights_lists_every_detector_and_entry(capsys):
    assert main(["weights"]) == 0
    out = capsys.readouterr().out
    for name in PACKAGE_DETECTORS:
        assert f"\n{name}" in f"\n{out}"
    for entry in load_catalogue().entries:
        assert entry.id in out
    assert "recce_best.pth" in out and "256 px" in out and "CC BY-NC 4.0" in out
    assert "224 px (centre crop of 256), mean 0.5/0.5/0.5, std 0.25/0.25/0.25" in out
    assert "recce convert FILE OUT.safetensors" in out


def test_weights_for_one_detector_and_as_json(capsys):
    assert main(["weights", "--detector", "rfm"]) == 0
    out = capsys.readouterr().out
    assert "rfm-authors-celebdf" in out and "recce-authors-ffpp-c23" not in out
    assert main(["weights", "--detector", "addnet", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [d["detector"] for d in listing] == ["addnet"] and listing[0]["weights"] == []
    assert main(["weights", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    recce = next(d for d in listing if d["detector"] == "recce")
    assert recce["installed"] is True
    assert {w["layout"] for w in recce["weights"]} == {"recce-official", "deepfakebench-recce"}
    assert main(["weights", "--detector", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("recce weights: unknown detector 'nope'") and "\n" not in err


def test_installed_flag_reads_the_package():
    assert catalogue.is_detector_installed("recce") and catalogue.is_detector_installed("xception")
    assert not catalogue.is_detector_installed("no_such_detector")


# --- recce convert ------------------------------------------------------------------------------------------------


def test_convert_recognises_official_recce_without_options(tmp_path, capsys, recce_state):
    src = tmp_path / "best_model.bin"
    torch.save({"model": {**recce_state, "encoder.fc.weight": torch.zeros(1000, 2048)}}, src)
    code, out, err = _convert(tmp_path, capsys, str(src), str(tmp_path / "a.safetensors"))
    assert code == 0, err
    assert err == ""
    record = _provenance(tmp_path / "a.safetensors")
    assert record["preprocess"]["input_size"] == 299 and record["preprocess"]["mean"] == [0.5, 0.5, 0.5]
    assert record["input_size_assumed"] is False and record["recognised_by"] == "key layout"
    assert record["sha256"] == file_sha256(src)
    assert "c23" in record["trained_on"][0] and "c40" in record["trained_on"][0]  # the layout cannot tell which
    assert "--entry" in record["catalogue_entry"]
    code, out, err = _convert(
        tmp_path, capsys, str(src), str(tmp_path / "b.safetensors"), "--entry", "recce-authors-ffpp-c40"
    )
    assert code == 0, err
    record = _provenance(tmp_path / "b.safetensors")
    assert record["catalogue_entry"] == "recce-authors-ffpp-c40" and record["recognised_by"] == "--entry"
    assert record["trained_on"] == ["FaceForensics++ c40 (all four methods)"]
    assert record["source"].startswith("RECCE authors")


def test_convert_recognises_deepfakebench_recce_and_its_size(tmp_path, capsys, recce_state):
    src = tmp_path / "recce_best.pth"
    torch.save(_deepfakebench_recce(recce_state), src)
    out_path = tmp_path / "dfb.safetensors"
    code, out, err = _convert(tmp_path, capsys, str(src), str(out_path))
    assert code == 0, err
    record = _provenance(out_path)
    assert record["preprocess"]["input_size"] == 256 and record["catalogue_entry"] == "deepfakebench-recce"
    assert "DeepfakeBench" in record["source"] and "c23" in record["trained_on"][0]
    assert "2 output(s), input size 256" in out
    code, out, err = _convert(tmp_path, capsys, str(src), str(out_path), "--input-size", "320")
    assert code == 0 and _provenance(out_path)["preprocess"]["input_size"] == 320  # the user's word wins
    code, out, err = _convert(tmp_path, capsys, str(src), str(out_path), "--entry", "recce-authors-ffpp-c23")
    assert code == 2 and "deepfakebench-recce" in err and "recce-authors-ffpp-c23" in err


def test_convert_unrecognised_file_needs_detector_and_says_size_is_assumed(tmp_path, capsys, recce_state):
    src = tmp_path / "wrapped.pth"
    torch.save({f"model.{k}": v for k, v in recce_state.items()}, src)  # importable, but no catalogued layout
    code, out, err = _convert(tmp_path, capsys, str(src), str(tmp_path / "x.safetensors"))
    assert code == 2
    assert err.count("\n") == 1 and str(src) in err and "--detector" in err and "not recognised" in err
    out_path = tmp_path / "y.safetensors"
    code, out, err = _convert(tmp_path, capsys, str(src), str(out_path), "--detector", "recce")
    assert code == 0
    assert err.count("\n") == 1 and "cannot be inferred" in err and "--input-size" in err and "299" in err
    record = _provenance(out_path)
    assert record["input_size_assumed"] is True and record["trained_on"] == ["unknown"]
    code, out, err = _convert(tmp_path, capsys, str(src), str(out_path), "--detector", "recce", "--input-size", "256")
    assert code == 0 and err == ""
    assert _provenance(out_path)["input_size_assumed"] is False


def test_convert_names_the_problem_for_shared_foreign_and_imagenet_layouts(tmp_path, capsys, xception_state):
    shared = tmp_path / "xception_best.pth"
    torch.save(_cadene(xception_state, 2, "backbone."), shared)
    code, out, err = _convert(tmp_path, capsys, str(shared), str(tmp_path / "s.safetensors"))
    assert code == 2 and err.count("\n") == 1 and "xception, rfm" in err and "--detector" in err
    code, out, err = _convert(tmp_path, capsys, str(shared), str(tmp_path / "s.safetensors"), "--detector", "xception")
    assert code == 0 and _provenance(tmp_path / "s.safetensors")["catalogue_entry"] == "deepfakebench-xception"
    imagenet = tmp_path / "xception-43020ad28.pth"
    torch.save(_cadene(xception_state, 1000), imagenet)
    code, out, err = _convert(tmp_path, capsys, str(imagenet), str(tmp_path / "i.safetensors"))
    assert code == 2 and "not a forgery detector" in err and str(imagenet) in err
    assert not (tmp_path / "i.safetensors").exists()


def test_convert_recognises_a_file_by_its_sha256(tmp_path, capsys, monkeypatch, recce_state):
    src = tmp_path / "renamed.pth"
    torch.save({f"model.{k}": v for k, v in recce_state.items()}, src)  # a layout the catalogue does not know
    entry = load_catalogue().entry("recce-authors-ffpp-c23")
    pinned = WeightsEntry(
        **{
            **entry.__dict__,
            "id": "pinned",
            "sha256": file_sha256(src),
            "preprocess": {**entry.preprocess, "input_size": 320},
        }
    )
    monkeypatch.setattr(catalogue, "load_catalogue", lambda: Catalogue(detectors={"recce": ""}, entries=(pinned,)))
    out_path = tmp_path / "pinned.safetensors"
    code, out, err = _convert(tmp_path, capsys, str(src), str(out_path))
    assert code == 0 and err == ""
    record = _provenance(out_path)
    assert record["catalogue_entry"] == "pinned" and record["recognised_by"] == "sha256"
    assert record["preprocess"]["input_size"] == 320 and record["input_size_assumed"] is False
