"""`recce extract` end to end on real-face videos: faces found, crop geometry, failures, resume, shards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote

import cv2
import numpy as np
import pandas as pd
import pytest
from media import (
    moving_face_frames,
    write_empty,
    write_face_video,
    write_frame_folder,
    write_text_as_video,
    write_truncated_copy,
)

from recce.cli import main
from recce.data import manifest
from recce.data.faces import crop_face
from recce.data.video import read_frames

HAAR = ["--detector", "haar", "--frames", "4", "--no-progress"]
PARTIAL_ABSENT = range(6)  # frames of real/partial without a face


def iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A `folder` dataset of videos, a frame folder and a photo; returns (root, video id -> face boxes)."""
    root = tmp_path_factory.mktemp("dataset")
    (root / "real").mkdir()
    (root / "fake").mkdir()
    boxes = {}
    for i in range(4):
        boxes[f"real/a{i}"] = write_face_video(root / "real" / f"a{i}.mp4", seed=i)
    for i in range(3):
        boxes[f"fake/g{i}"] = write_face_video(root / "fake" / f"g{i}.mp4", seed=10 + i, photo="grace_hopper")
    boxes["real/partial"] = write_face_video(root / "real" / "partial.mp4", seed=5, absent=PARTIAL_ABSENT)
    frames, boxes["fake/seq"] = moving_face_frames(3, photo="grace_hopper", seed=20)
    write_frame_folder(root / "fake" / "seq", frames, ["1.png", "2.png", "3.png"])
    frames, boxes["real/photo"] = moving_face_frames(1, seed=30)
    write_frame_folder(root / "real", frames, ["photo.png"])
    return root, boxes


def extract(root: Path, out: Path, *options: str) -> int:
    return main(["extract", "folder", "--root", str(root), "--out", str(out), *HAAR, *options])


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):
    """An uninterrupted in-process run over the whole dataset."""
    out = tmp_path_factory.mktemp("reference")
    assert extract(dataset[0], out) == 0
    return out


def read_manifest(path: Path) -> pd.DataFrame:
    return manifest.read(path).drop(columns="abspath")


def test_every_face_found_with_its_box_and_crop(dataset, reference):
    root, boxes = dataset
    frame = manifest.read(reference / "manifest.parquet")
    assert sorted(frame["video"].unique()) == sorted(boxes)
    assert set(frame["detector"]) == {"haar"}
    for video, rows in frame.groupby("video"):
        expected = [(i, box) for i, box in enumerate(boxes[video]) if box is not None]
        sampled = {1: [0], 3: [0, 1, 2], 12: [0, 4, 7, 11]}[len(boxes[video])]  # linspace(0, n-1, 4)
        assert rows["frame"].tolist() == [i for i in sampled if boxes[video][i] is not None], video
        for row in rows.itertuples():
            assert iou((row.x1, row.y1, row.x2, row.y2), dict(expected)[row.frame]) > 0.75, (video, row.frame)
    assert frame.loc[frame["video"].str.startswith("real/"), "label"].eq(0).all()
    assert frame.loc[frame["video"].str.startswith("fake/"), "label"].eq(1).all()
    # the crop on disk is the 1.3x square around the manifest's box, cut from the decoded frame
    for row in frame[frame["video"] == "real/a1"].itertuples():
        decoded = dict(read_frames(root / "real" / "a1.mp4", [row.frame]))[row.frame]
        expected_crop = crop_face(decoded, (row.x1, row.y1, row.x2, row.y2), scale=1.3, size=299)
        stored = cv2.cvtColor(cv2.imread(row.abspath), cv2.COLOR_BGR2RGB)
        assert np.array_equal(stored, expected_crop)


def test_frames_without_a_face_are_listed(reference):
    no_face = pd.read_csv(reference / "no_face.csv")
    assert no_face[["video", "frame"]].values.tolist() == [["real/partial", 0], ["real/partial", 4]]
    assert pd.read_csv(reference / "failures.csv").empty


def test_detector_none_keeps_whole_images(dataset, tmp_path):
    root = tmp_path / "crops"
    frames, _ = moving_face_frames(3, size=(96, 64), face_width=30)
    write_frame_folder(root / "fake" / "seq", frames, ["0.png", "1.png", "2.png"])
    write_frame_folder(root / "real", frames[:1], ["still.png"])
    out = tmp_path / "out"
    assert (
        main(["extract", "folder", "--root", str(root), "--out", str(out), "--detector", "none", "--all-frames"]) == 0
    )
    frame = manifest.read(out / "manifest.parquet")
    assert frame[["video", "frame"]].values.tolist() == [
        ["fake/seq", 0],
        ["fake/seq", 1],
        ["fake/seq", 2],
        ["real/still", 0],
    ]
    assert set(frame["detector"]) == {"none"} and set(frame["score"]) == {1.0}
    assert frame[["x1", "y1", "x2", "y2"]].drop_duplicates().values.tolist() == [[0, 0, 96, 64]]
    for row, source in zip(frame.itertuples(), [*frames, frames[0]], strict=True):
        assert np.array_equal(cv2.cvtColor(cv2.imread(row.abspath), cv2.COLOR_BGR2RGB), source)


def test_bad_inputs_are_logged_and_the_run_goes_on(tmp_path, capsys):
    root = tmp_path / "root"
    (root / "real").mkdir(parents=True)
    good = root / "real" / "good.mp4"
    write_face_video(good, n_frames=8)
    write_text_as_video(root / "real" / "text.mp4")
    write_empty(root / "real" / "empty.mp4")
    write_truncated_copy(good, root / "real" / "truncated.mp4")
    out = tmp_path / "out"
    for run in range(2):  # failures are retried on a re-run, the finished video is not redone
        assert extract(root, out) == 0
        printed = capsys.readouterr().out
        assert "0 already done, 3 failed" in printed if run == 0 else "1 already done, 3 failed" in printed
        failures = pd.read_csv(out / "failures.csv")
        assert sorted(Path(p).name for p in failures["path"]) == ["empty.mp4", "text.mp4", "truncated.mp4"]
        reasons = dict(zip((Path(p).name for p in failures["path"]), failures["reason"], strict=True))
        assert reasons["empty.mp4"] == "empty file"
        assert reasons["text.mp4"].startswith("not a readable video")
        assert reasons["truncated.mp4"].startswith("not a readable video")
        assert manifest.read(out / "manifest.parquet")["video"].unique().tolist() == ["real/good"]
    assert not (out / "crops" / "folder" / "real" / "text").exists()


def _parts(out: Path) -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / "parts" / "folder").glob("*.parquet")}


# `recce extract` without the other commands' imports, to keep the subprocess start short
LAUNCHER = (
    "import argparse, sys; from recce.commands import extract as command; parser = argparse.ArgumentParser(); "
    "command.add_arguments(parser); sys.exit(command.run(parser.parse_args()))"
)


# The extraction runs at the lowest priority, so the test, which waits for its progress to send a signal, reacts
# before more work is done even on a loaded machine (else the run can finish before a Ctrl-C reaches it).
NICEST = ("nice", "-n", "19")


def _start(root: Path, out: Path, workers: int) -> subprocess.Popen:
    command = [*NICEST, sys.executable, "-c", LAUNCHER, "folder", "--root", str(root), "--out", str(out)]
    command += [*HAAR, "--workers", str(workers)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _wait_for_parts(process: subprocess.Popen, out: Path, count: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while len(_parts(out)) < count:
        assert process.poll() is None, f"extraction ended early: {process.communicate()}"
        assert time.monotonic() < deadline, "no extraction progress"
        time.sleep(0.005)


def _wait_for_group_exit(group: int, timeout: float = 5.0) -> None:
    """Until the killed worker is gone too (an unreaped zombie runs no code, so the timeout is harmless)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)


def test_resume_after_kill_and_interrupt(dataset, reference, tmp_path):
    root, boxes = dataset
    out = tmp_path / "out"
    # 1. SIGKILL the whole process group (main process and its worker) once 2 items are done
    process = _start(root, out, workers=1)
    _wait_for_parts(process, out, 2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    _wait_for_group_exit(process.pid)
    killed = _parts(out)
    assert 2 <= len(killed) < len(boxes) and not (out / "manifest.parquet").exists()
    # 2. Ctrl-C (SIGINT to the group) after one more item: a graceful stop with a partial manifest
    process = _start(root, out, workers=0)
    _wait_for_parts(process, out, len(killed) + 1)
    os.killpg(process.pid, signal.SIGINT)
    stdout, _ = process.communicate(timeout=60)
    assert process.returncode == 130 and b"interrupted" in stdout
    interrupted = _parts(out)
    assert {p: interrupted[p] for p in killed} == killed
    partial = read_manifest(out / "manifest.parquet")
    assert set(partial["video"]) == {unquote(p.stem) for p in interrupted}
    # 3. the same command again finishes the rest, redoing nothing finished
    assert extract(root, out) == 0
    final = _parts(out)
    assert {p: final[p] for p in interrupted} == interrupted and len(final) == len(boxes)
    result = read_manifest(out / "manifest.parquet")
    pd.testing.assert_frame_equal(result, read_manifest(reference / "manifest.parquet"))
    on_disk = {p.relative_to(out).as_posix() for p in (out / "crops").rglob("*") if p.is_file()}
    assert on_disk == set(result["path"])
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_shards_partition_the_items_and_merge_to_the_whole(dataset, reference, tmp_path, capsys):
    root, boxes = dataset
    out = tmp_path / "out"
    shards = [out / f"manifest-shard-{k}-of-3.parquet" for k in (1, 2, 3)]
    for k in (1, 2, 3):
        assert extract(root, out, "--shard", f"{k}/3") == 0
    videos = [set(manifest.read(path)["video"]) for path in shards]
    assert all(videos) and sum(map(len, videos)) == len(set().union(*videos)) == len(boxes)
    merged = tmp_path / "merged" / "all.parquet"
    assert main(["manifest", "merge", str(merged), *map(str, shards)]) == 0
    expected = read_manifest(reference / "manifest.parquet")
    result = manifest.read(merged)
    assert [Path(p).resolve() for p in result["abspath"]] == [(out / p).resolve() for p in expected["path"]]
    columns = [c for c in expected.columns if c != "path"]
    pd.testing.assert_frame_equal(result[columns], expected[columns])
    capsys.readouterr()
    assert main(["manifest", "info", str(merged)]) == 0
    printed = capsys.readouterr().out
    assert f"{len(expected)} crops from {len(boxes)} videos" in printed


def test_changed_settings_and_bad_shard_are_refused(dataset, reference, capsys):
    assert extract(dataset[0], reference, "--scale", "1.5") == 2
    assert "scale: 1.3 before, 1.5 now" in capsys.readouterr().err
    assert extract(dataset[0], reference, "--shard", "4/3") == 2
    assert "shard '4/3'" in capsys.readouterr().err


def test_changed_split_options_re_split_without_re_cropping(tmp_path, capsys):
    """Issue: a rerun with --val-fraction 0.5 after 0.0 kept the old splits. The index decides the split."""
    root = tmp_path / "crops"
    frames, _ = moving_face_frames(1, size=(64, 64), face_width=30)
    for label in ("real", "fake"):
        for i in range(6):
            write_frame_folder(root / label, frames, [f"{label}{i}.png"])
    out = tmp_path / "out"
    base = ["extract", "folder", "--root", str(root), "--out", str(out), "--face-detector", "none", "--no-progress"]
    assert main(base) == 0
    assert set(manifest.read(out / "manifest.parquet")["split"]) == {"test"}
    crops = {p: p.stat().st_mtime_ns for p in (out / "crops").rglob("*.png")}
    capsys.readouterr()
    assert main([*base, "--val-fraction", "0.5", "--test-fraction", "0.2"]) == 0
    printed = capsys.readouterr().out
    assert "12 already done" in printed and "moved to another split" in printed
    splits = manifest.read(out / "manifest.parquet")["split"]
    assert {"train", "val"} <= set(splits) and len(splits) == 12
    assert {p: p.stat().st_mtime_ns for p in (out / "crops").rglob("*.png")} == crops  # nothing re-cropped
