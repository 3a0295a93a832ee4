"""Manifest I/O: vectorised paths equal the per-row pathlib/relpath results; `manifest info` stays free of torch."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from recce.commands import manifest as manifest_command
from recce.data import manifest

# regular relative paths, and the irregular ones a hand-made manifest may hold
PATHS = [
    "crops/dfdc/part_1/abc/000000.png",
    "crops/ffpp/youtube/000/000009.png",
    "./crops/dot/000000.png",
    "crops//double/000000.png",
    "../elsewhere/crops/000000.png",
    "crops/up/../000003.png",
    "/data/absolute/000000.png",
]


def rows(paths: list[str], video: str = "v", label: int = 0) -> pd.DataFrame:
    return manifest.to_frame(
        [
            dict(path=p, dataset="d", split="train", video=f"{video}{i % 3}", frame=i, label=label, method="m")
            | dict(compression="", x1=0, y1=0, x2=1, y2=1, score=1.0, detector="none")
            for i, p in enumerate(paths)
        ]
    )


def test_read_joins_paths_as_pathlib_does(tmp_path):
    path = manifest.write(rows(PATHS), tmp_path / "sub" / "m.parquet")
    frame = manifest.read(path)
    root = path.resolve().parent
    assert frame["abspath"].tolist() == [str(root / p) for p in PATHS]
    assert list(frame.columns) == [*manifest.COLUMNS, "abspath"]
    summary = manifest.read(path, columns=["video", "dataset", "label"])
    assert list(summary.columns) == ["dataset", "video", "label"]  # canonical order, no paths
    pd.testing.assert_frame_equal(summary, frame[["dataset", "video", "label"]])


def test_read_names_the_file_and_the_problem(tmp_path):
    with pytest.raises(manifest.ManifestError, match=r"missing\.parquet: manifest not found"):
        manifest.read(tmp_path / "missing.parquet")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(manifest.ManifestError, match=r"bad\.parquet: not a readable Parquet manifest"):
        manifest.read(tmp_path / "bad.parquet", columns=["video"])
    rows(PATHS[:2]).drop(columns="detector").to_parquet(tmp_path / "other.parquet")
    with pytest.raises(manifest.ManifestError, match=r"other\.parquet: not a recce manifest, missing columns detector"):
        manifest.read(tmp_path / "other.parquet", columns=["video"])


@pytest.mark.parametrize("out_folder", [".", "merged", "a/shard0", ".."])
def test_merge_rebases_paths_as_relpath_does(tmp_path, out_folder):
    first = manifest.write(rows(PATHS), tmp_path / "a" / "shard0" / "manifest.parquet")
    second = manifest.write(rows(PATHS[:2] + ["crops/own/000000.png"], "w", 1), tmp_path / "b" / "manifest.parquet")
    same_crop = manifest.write(rows(["../a/shard0/" + PATHS[0]], "x", 1), tmp_path / "c" / "manifest.parquet")
    out = tmp_path / out_folder / "merged.parquet"
    merged = manifest.merge([first, second, same_crop], out)

    expected = pd.concat([manifest.read(p) for p in (first, second, same_crop)], ignore_index=True)
    expected["path"] = [os.path.relpath(a, out.resolve().parent) for a in expected["abspath"]]
    expected = expected.drop(columns="abspath").drop_duplicates(subset=["path"], keep="first")
    expected = manifest.to_frame(expected.sort_values(["dataset", "split", "video", "frame"], kind="stable"))
    pd.testing.assert_frame_equal(merged, expected)
    assert len(merged) == len(PATHS) + 3  # the third manifest's one crop is the first one's
    reread = manifest.read(out)
    assert set(reread["abspath"].map(os.path.normpath)) == {
        os.path.normpath(a) for a in pd.concat([manifest.read(p)["abspath"] for p in (first, second)])
    }
    assert all(Path(a).is_absolute() for a in reread["abspath"])


def test_info_counts_crops_and_videos(tmp_path, capsys):
    path = manifest.write(pd.concat([rows(PATHS[:4]), rows(PATHS[4:], "w", 1)]), tmp_path / "m.parquet")
    parser = argparse.ArgumentParser()
    manifest_command.add_arguments(parser)
    assert manifest_command.run(parser.parse_args(["info", str(path)])) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{path}: 7 crops from 6 videos"
    assert lines[2].split() == ["d", "train", "0", "m", "4", "3"]
    assert lines[3].split() == ["d", "train", "1", "m", "3", "3"]


def test_manifest_command_does_not_import_torch():
    code = "import sys, recce.commands.manifest; print([m for m in ('torch', 'sklearn', 'cv2') if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
