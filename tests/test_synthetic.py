"""The synthetic benchmark: deterministic, balanced, split by identity, with forgeries confined to the face."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from recce.cli import main
from recce.data import manifest
from recce.data.synthetic import (
    METHODS,
    SyntheticConfig,
    SyntheticError,
    generate,
    manipulate,
    render_identity_frames,
)

TINY = SyntheticConfig(identities=10, frames_per_video=2, size=64)


def image_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted((root / "crops").rglob("*.*"))}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The manifest of a tiny JPEG benchmark, made once for the tests that only read it."""
    return generate(tmp_path_factory.mktemp("tiny") / "bench", TINY, progress=False)


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tiny: Path, tmp_path: Path) -> None:
    again = generate(tmp_path / "again", TINY, progress=False)
    assert image_files(tiny.parent) == image_files(again.parent)
    assert tiny.read_bytes() == again.read_bytes()
    other = generate(tmp_path / "other", replace(TINY, seed=1), progress=False)
    theirs, ours = image_files(other.parent), image_files(tiny.parent)
    assert not set(theirs.items()) & set(ours.items())


def test_manifest_columns_and_values(tiny: Path) -> None:
    frame = manifest.read(tiny)
    assert list(frame.columns[: len(manifest.COLUMNS)]) == list(manifest.COLUMNS)
    assert len(frame) == TINY.identities * 2 * TINY.frames_per_video
    assert set(frame["dataset"]) == {"synthetic"} and set(frame["detector"]) == {"synthetic"}
    assert (frame["score"] == 1.0).all()
    assert set(frame["compression"]) <= {f"q{q}" for q in TINY.jpeg_qualities}
    assert all(Path(p).is_file() and p.endswith(".jpg") for p in frame["abspath"])
    for row in frame.itertuples():
        identity, kind = re.fullmatch(r"id(\d{4})_(\w+)", row.video).groups()
        assert kind == row.method and row.label == int(kind != "real")
        assert row.path == f"crops/{row.split}/{row.video}/{row.frame:04d}.jpg"
    fakes = frame[frame["label"] == 1].drop_duplicates("video")
    for row in fakes.itertuples():  # methods rotate over identities
        assert row.method == METHODS[int(row.video[2:6]) % len(METHODS)]
    # the face box is centred and about 1/1.3 of the side, as a 1.3x conservative crop would leave it
    height = frame["y2"] - frame["y1"]
    assert ((height / TINY.size - 1 / 1.3).abs() < 0.08).all()
    assert (((frame["x1"] + frame["x2"]) / 2 / TINY.size - 0.5).abs() < 0.05).all()
    assert ((frame["x2"] - frame["x1"]) < height).all()


def test_labels_balance_and_every_identity_has_one_real_and_one_fake_video(tiny: Path) -> None:
    frame = manifest.read(tiny)
    assert (frame["label"] == 0).sum() == (frame["label"] == 1).sum()
    videos = frame.drop_duplicates("video")
    per_identity = videos.groupby(videos["video"].str[:6])["label"].agg(sorted)
    assert len(per_identity) == TINY.identities
    assert all(labels == [0, 1] for labels in per_identity)


def test_splits_are_disjoint_by_identity_and_follow_the_fractions(tmp_path: Path) -> None:
    config = replace(TINY, identities=20, frames_per_video=1, size=32, jpeg_qualities=None)
    frame = manifest.read(generate(tmp_path / "b", config, progress=False))
    identities = {split: set(group["video"].str[:6]) for split, group in frame.groupby("split")}
    assert identities["train"].isdisjoint(identities["val"])
    assert identities["train"].isdisjoint(identities["test"]) and identities["val"].isdisjoint(identities["test"])
    assert [len(identities[s]) for s in ("train", "val", "test")] == [14, 3, 3]
    for split, group in frame[frame["label"] == 1].groupby("split"):  # each split holds the methods evenly
        counts = group.drop_duplicates("video")["method"].value_counts().reindex(list(METHODS), fill_value=0)
        assert counts.max() - counts.min() <= 1, split
    assert set(frame["compression"]) == {"png"} and frame["path"].str.endswith(".png").all()


def test_frames_of_an_identity_vary_a_little_and_are_deterministic() -> None:
    frames = render_identity_frames(3, 3, 64, seed=0)
    assert all(f.shape == (64, 64, 3) and f.dtype == np.uint8 for f in frames)
    np.testing.assert_array_equal(render_identity_frames(3, 1, 64, seed=0)[0], frames[0])

    def distance(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())

    other_person = render_identity_frames(4, 1, 64, seed=0)[0]
    assert 1 < distance(frames[0], frames[1]) < distance(frames[0], other_person)


@pytest.mark.parametrize("method", METHODS)
def test_each_method_changes_the_face_and_keeps_the_background(method: str) -> None:
    size = 96
    real = render_identity_frames(5, 1, size, seed=0)[0]
    donor = render_identity_frames(6, 1, size, seed=0)[0]
    fake = manipulate(real, method, np.random.default_rng(0), donor)
    assert fake.shape == real.shape and fake.dtype == np.uint8
    difference = np.abs(fake.astype(np.int16) - real.astype(np.int16)).max(axis=2)
    y, x = np.mgrid[0:size, 0:size] / size
    inner = ((x - 0.5) / 0.2) ** 2 + ((y - 0.6) / 0.15) ** 2 < 1  # eyes to mouth
    outside = ((x - 0.5) / 0.37) ** 2 + ((y - 0.53) / 0.43) ** 2 > 1  # background, hair ends, shoulders
    assert difference[inner].mean() > 4, method
    assert difference[outside].max() <= 1, method


def test_strength_scales_the_trace() -> None:
    real = render_identity_frames(7, 1, 64, seed=0)[0]
    for method in ("expression", "rerender", "upsample"):
        weak, strong = (
            np.abs(manipulate(real, method, np.random.default_rng(1), strength=s).astype(np.int16) - real).mean()
            for s in (0.3, 1.0)
        )
        assert weak < strong, method


def test_bad_requests_are_one_clear_error() -> None:
    real = render_identity_frames(0, 1, 32, seed=0)[0]
    with pytest.raises(SyntheticError, match="unknown manipulation"):
        manipulate(real, "deepfakes", np.random.default_rng(0))
    with pytest.raises(SyntheticError, match="donor"):
        manipulate(real, "faceswap", np.random.default_rng(0))
    with pytest.raises(SyntheticError, match="methods"):
        generate("unused", replace(TINY, methods=("faceswap", "nope")), progress=False)


def test_same_config_is_reused_and_another_config_is_refused(tiny: Path, tmp_path: Path) -> None:
    stamp = tiny.parent / "synthetic.json"
    before = (tiny.stat().st_mtime_ns, stamp.stat().st_mtime_ns)
    assert generate(tiny.parent, TINY, progress=False) == tiny
    assert (tiny.stat().st_mtime_ns, stamp.stat().st_mtime_ns) == before
    with pytest.raises(SyntheticError, match=re.escape(str(tiny.parent))):
        generate(tiny.parent, replace(TINY, seed=5), progress=False)
    (tmp_path / "notes.txt").write_text("someone else's folder")
    with pytest.raises(SyntheticError, match="not empty"):
        generate(tmp_path, TINY, progress=False)


def test_cli_writes_the_benchmark_and_reports_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli"
    argv = ["synth", "--out", str(out), "--identities", "4", "--frames", "1", "--size", "40", "--png"]
    assert main([*argv, "--methods", "rerender", "upsample", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert str(out / "manifest.parquet") in printed and "8 crops (4 real, 4 fake)" in printed
    frame = manifest.read(out / "manifest.parquet")
    assert set(frame["method"]) == {"real", "rerender", "upsample"} and set(frame["compression"]) == {"png"}
    assert main([*argv, "--seed", "3", "--no-progress"]) == 2
    assert str(out) in capsys.readouterr().err
