"""A corpus of bad, hostile and concurrent inputs, built at test time: each case gets an exit status, one line
naming the file and the problem, and nothing finished is lost.

Cases: concurrent and killed runs (locks, workers dying with their parent), oversized and undecodable images
and videos, rotated and long-named videos, directory-link loops, decompression-bomb archives and bad
WildDeepfake archives, crafted checkpoints and training states, bad manifest labels and configuration values.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import time
import zipfile
import zlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import safetensors.torch
import torch
from media import face_photo, moving_face_frames, write_face_video, write_text_as_video, write_video

from recce import checkpoints, weights
from recce.cli import main
from recce.data import archive, manifest
from recce.data.extract import NAME_LIMIT, crop_dir, part_path
from recce.data.faces import build_detector
from recce.data.indexers.base import DatasetLayoutError, MediaItem
from recce.data.indexers.folder import index_folder
from recce.data.indexers.wilddeepfake import index_wilddeepfake
from recce.data.video import MediaError, read_frames, read_image
from recce.detect import media_files
from recce.detectors import Preprocess
from recce.detectors.recce import Recce
from recce.locks import LOCK_NAME, LockHeld, OutputLock

HAAR = ["--face-detector", "haar", "--frames", "2", "--no-progress"]
CJK_NAME = "東京の夜景と人々の笑顔が映る長い名前の動画ファイルです一二三四五六七八"  # 32 characters, 96 bytes
PAYLOAD_MARK = "recce-payload-ran"


# ---------------------------------------------------------------------------------------------- corpus helpers
def forged_png(path: Path, width: int, height: int) -> Path:
    """A small real PNG whose header claims width x height (the pixel data stays small): a decompression bomb's
    header without its gigabytes."""
    ok, encoded = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))
    data = bytearray(encoded.tobytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def write_image(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return path


def bad_files(folder: Path) -> dict[str, str]:
    """File name -> a word its failure line must contain."""
    folder.mkdir(parents=True, exist_ok=True)
    forged_png(folder / "huge.png", 40000, 40000)
    forged_png(folder / "wide.png", 20000, 20000)
    write_text_as_video(folder / "text.mp4")
    (folder / "empty.png").write_bytes(b"")
    (folder / "garbage.jpg").write_bytes(os.urandom(3000))
    return {"huge.png": "over the limit", "wide.png": "over the limit", "text.mp4": "not a readable video",
            "empty.png": "empty file", "garbage.jpg": "not a readable image"}  # fmt: skip


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """`recce ARGS` in this process (a fresh interpreter costs seconds): exit status, stdout, stderr."""
    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as exit:  # argparse
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "recce.safetensors"
    return checkpoints.save(Recce(preprocess=Preprocess(64)).eval(), path)


# ---------------------------------------------------------------------------------------------- locks
def test_lock_names_the_holder_and_a_dead_holders_lock_is_taken_over(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from recce.locks import OutputLock; "
         f"lock = OutputLock({str(tmp_path)!r}, 'recce extract').acquire(); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockHeld, match=rf"in use by another run \(recce extract, pid {holder.pid} on "):
            OutputLock(tmp_path, "recce train").acquire()
        assert socket.gethostname() in (tmp_path / LOCK_NAME).read_text()
    finally:
        holder.kill()
        holder.wait()
    with OutputLock(tmp_path, "recce train"), pytest.raises(LockHeld):  # the killed holder's lock died with it
        OutputLock(tmp_path, "recce extract").acquire()
    OutputLock(tmp_path, "again").acquire().release()


def test_shards_share_a_folder_but_exclude_a_whole_run(tmp_path):
    from recce.data.extract import output_lock

    shard_1, shard_2 = output_lock(tmp_path, (1, 2)), output_lock(tmp_path, (2, 2))
    for lock in (*shard_1, *shard_2):
        lock.acquire()
    with pytest.raises(LockHeld):
        output_lock(tmp_path, None)[0].acquire()
    with pytest.raises(LockHeld):  # the same shard twice
        output_lock(tmp_path, (1, 2))[1].acquire()
    for lock in (*shard_1, *shard_2):
        lock.release()
    output_lock(tmp_path, None)[0].acquire().release()


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_extract_refuses_a_folder_in_use(capsys, tmp_path):
    root, out = tmp_path / "root", tmp_path / "out"
    write_face_video(root / "real" / "v.mp4", n_frames=4)
    with OutputLock(out, "recce extract"):
        result = run_cli(capsys, "extract", "folder", "--root", str(root), "--out", str(out), *HAAR)
    assert result[0] == 2
    assert f"in use by another run (recce extract, pid {os.getpid()} on" in one_line(result[2])
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process parents from Linux's /proc")
def test_killed_extract_leaves_no_workers_and_its_rerun_loses_nothing(capsys, tmp_path):
    root, out = tmp_path / "root", tmp_path / "out"
    for i in range(3):
        write_face_video(root / "real" / f"v{i}.mp4", n_frames=16, seed=i)
    write_face_video(root / "fake" / "f.mp4", n_frames=16, seed=9, photo="grace_hopper")
    options = [
        "folder",
        "--root",
        str(root),
        "--out",
        str(out),
        "--face-detector",
        "haar",
        "--all-frames",
        "--no-progress",
    ]
    first = subprocess.Popen([sys.executable, "-m", "recce", "extract", *options, "--workers", "1"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 90
    while not list(out.glob("parts/folder/*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.02)
    workers = {pid for pid in _children(first.pid) if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()}
    assert len(workers) == 1, "the worker did not start"
    with pytest.raises(LockHeld, match=f"pid {first.pid} on"):  # a second run would be refused
        OutputLock(out, "probe").acquire()
    first.send_signal(signal.SIGKILL)  # while the worker is busy with the next item
    first.wait()
    time.sleep(0.3)
    assert not any(map(_alive, workers)), "workers outlived their killed parent"
    done = {p.name: p.stat().st_mtime_ns for p in out.glob("parts/folder/*.parquet")}
    rerun = run_cli(capsys, "extract", *options)
    assert rerun[0] == 0, rerun[2]
    assert {name: mtime for name, mtime in done.items()} == {
        p.name: p.stat().st_mtime_ns for p in out.glob("parts/folder/*.parquet") if p.name in done
    }  # finished items were kept, not redone
    frame = manifest.read(out / "manifest.parquet")
    assert sorted(frame["video"].unique()) == ["fake/f", *(f"real/v{i}" for i in range(3))]
    assert all(Path(p).is_file() for p in frame["abspath"])


def test_train_refuses_a_folder_in_use(capsys, tmp_path, tiny_manifest):
    out = tmp_path / "run"
    with OutputLock(out, "recce train"):
        result = run_cli(capsys, "train", *TRAIN, f"data.manifest={tiny_manifest}", f"train.out={out}")
    assert result[0] == 2
    assert f"in use by another run (recce train, pid {os.getpid()} on" in one_line(result[2])
    assert not (out / "metrics.jsonl").exists()


# ---------------------------------------------------------------------------------------------- decoding
def test_oversized_images_refused_from_the_header_before_decoding(tmp_path):
    huge = forged_png(tmp_path / "huge.png", 40000, 40000)
    with pytest.raises(MediaError, match=r"huge.png: more than \d+ pixels is over the limit of 33177600"):
        read_image(huge)
    large = forged_png(tmp_path / "large.png", 9000, 5000)
    with pytest.raises(MediaError, match=r"large.png: 9000x5000 pixels is over the limit of 33177600"):
        read_image(large)
    with pytest.raises(MediaError, match=r"small.png: 640x480 pixels is over the limit of 1000"):
        read_image(write_image(tmp_path / "small.png", np.zeros((480, 640, 3), np.uint8)), max_pixels=1000)
    with pytest.raises(MediaError, match="not a readable image"):  # past our limit, OpenCV's own error is the file's
        read_image(huge, max_pixels=4 * 10**9)


def test_oversized_video_frames_refused(tmp_path):
    video = tmp_path / "clip.mp4"
    write_face_video(video, n_frames=4)
    with pytest.raises(MediaError, match=r"clip.mp4: 320x240 pixels is over the limit of 70000"):
        list(read_frames(video, [0], max_pixels=70000))


def _folder_with_bad_files(root: Path) -> dict[str, str]:
    for i in range(2):
        write_face_video(root / "real" / f"good{i}.mp4", n_frames=6, seed=i)
    return bad_files(root / "real")


def test_extract_over_a_folder_of_bad_files_completes_and_lists_them(capsys, tmp_path):
    root, out = tmp_path / "root", tmp_path / "out"
    bad = _folder_with_bad_files(root)
    result = run_cli(capsys, "extract", "folder", "--root", str(root), "--out", str(out), *HAAR)
    assert result[0] == 0, result[2]
    assert "2 extracted, 0 already done, 5 failed" in result[1]
    failures = pd.read_csv(out / "failures.csv")
    reasons = {Path(p).name: r for p, r in zip(failures["path"], failures["reason"], strict=True)}
    assert set(reasons) == set(bad)
    for name, word in bad.items():
        assert word in reasons[name], (name, reasons[name])
    assert sorted(manifest.read(out / "manifest.parquet")["video"].unique()) == ["real/good0", "real/good1"]
    again = run_cli(capsys, "extract", "folder", "--root", str(root), "--out", str(out), *HAAR)
    assert again[0] == 0 and "0 extracted, 2 already done, 5 failed" in again[1]


def test_detect_over_a_folder_of_bad_files_scores_the_good_ones(capsys, tmp_path, checkpoint):
    root = tmp_path / "root"
    bad = _folder_with_bad_files(root)
    options = ["--face-detector", "haar", "--frames", "2", "--csv", "--no-progress"]
    result = run_cli(capsys, "detect", str(root), "--checkpoint", str(checkpoint), *options)
    assert result[0] == 0, result[2]
    rows = pd.read_csv(io.StringIO(result[1])).set_index("path")
    rows.index = [Path(p).name for p in rows.index]
    assert rows.loc[["good0.mp4", "good1.mp4"], "score"].between(0, 1).all()
    for name, word in bad.items():
        assert rows.loc[name, "verdict"] == "error" and word in rows.loc[name, "error"], name


# ---------------------------------------------------------------------------------------------- rotation
def test_rotated_video_is_decoded_upright_and_its_faces_found(tmp_path):
    frames, _ = moving_face_frames(6, size=(320, 240))
    stored = [np.ascontiguousarray(np.rot90(frame, -1)) for frame in frames]  # the sensor's sideways pixels
    video = write_video(tmp_path / "phone.mp4", stored, display_rotation=90)
    decoded = dict(read_frames(video, range(6)))
    for index, frame in enumerate(frames):
        assert decoded[index].shape == frame.shape
        assert np.abs(decoded[index].astype(int) - frame).mean() < 8  # H.264 noise
    haar = build_detector("haar")
    assert all(haar.detect([decoded[i]])[0] for i in range(6))
    out = tmp_path / "out"
    (tmp_path / "root" / "real").mkdir(parents=True)
    os.replace(video, tmp_path / "root" / "real" / "phone.mp4")
    assert main(["extract", "folder", "--root", str(tmp_path / "root"), "--out", str(out), *HAAR]) == 0
    assert len(manifest.read(out / "manifest.parquet")) == 2  # both sampled frames have their face


# ---------------------------------------------------------------------------------------------- names, links
def test_long_cjk_video_name_is_extracted_under_a_hashed_name(tmp_path):
    root, out = tmp_path / "root", tmp_path / "out"
    write_face_video(root / "fake" / f"{CJK_NAME}.mp4", n_frames=6)
    assert main(["extract", "folder", "--root", str(root), "--out", str(out), *HAAR]) == 0
    frame = manifest.read(out / "manifest.parquet")
    assert set(frame["video"]) == {f"fake/{CJK_NAME}"} and len(frame) == 2
    (part,) = (out / "parts" / "folder").glob("*.parquet")
    assert part.name.startswith("#") and len(part.name.encode()) < 255
    assert all(Path(p).is_file() for p in frame["abspath"])


def test_unportable_ids_get_hashed_folders_and_distinct_ids_stay_distinct(tmp_path):
    def item(video: str) -> MediaItem:
        return MediaItem("ffpp", "test", video, 0, "youtube", "c23", tmp_path / "x.mp4", "video")

    plain, odd, long = item("youtube/000"), item('a:b*c/"d"'), item("x" * 300)
    assert crop_dir(tmp_path, plain) == tmp_path / "crops" / "ffpp" / "youtube" / "000"
    assert crop_dir(tmp_path, odd).parent.name == "#hashed" and crop_dir(tmp_path, long).parent.name == "#hashed"
    assert crop_dir(tmp_path, odd) != crop_dir(tmp_path, long)
    names = {part_path(tmp_path, i).name for i in (plain, odd, long, item("x" * 301))}
    assert len(names) == 4 and all(len(name.encode()) <= NAME_LIMIT + 8 for name in names)


def test_directory_links_are_not_followed_and_a_file_is_indexed_once(tmp_path):
    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "fake").mkdir()
    (tmp_path / "real" / "a.mp4").write_bytes(b"x")
    (tmp_path / "fake" / "b.mp4").write_bytes(b"y")
    (tmp_path / "real" / "sub" / "up").symlink_to("../..", target_is_directory=True)
    (tmp_path / "fake" / "again.mp4").symlink_to(tmp_path / "real" / "a.mp4")
    result = index_folder(tmp_path)
    assert len(result.items) == 2
    assert sum(reason == "link to a folder, not followed" for _, reason in result.skipped) == 1
    assert any("the same file as" in reason for _, reason in result.skipped)
    found, _ = media_files([tmp_path])
    assert sorted(p.resolve().name for p in found) == ["a.mp4", "b.mp4"]


# ---------------------------------------------------------------------------------------------- archives
def _tar(path: Path, members: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_decompression_bomb_and_member_flood_refused_before_writing(tmp_path):
    bomb = _tar(tmp_path / "bomb.tar.gz", {"1/real/0/0.png": bytes(80 * 2**20)})
    assert bomb.stat().st_size < 200_000
    with pytest.raises(DatasetLayoutError, match="more than 100 times the archive's size"):
        archive.safe_extract(bomb, tmp_path / "bomb")
    flood = _tar(tmp_path / "flood.tar", {f"1/real/0/{i}.png": b"" for i in range(30)}, "w")
    with pytest.raises(DatasetLayoutError, match="more than 20 members"):
        archive.safe_extract(flood, tmp_path / "flood", archive.ArchiveLimits(max_members=20))
    with pytest.raises(DatasetLayoutError, match="total more than 1000 bytes"):
        archive.safe_extract(bomb, tmp_path / "bomb", archive.ArchiveLimits(max_bytes=1000))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.tar.gz", "flood.tar"]


def test_one_bad_wilddeepfake_archive_does_not_stop_the_dataset(tmp_path):
    frames, _ = moving_face_frames(2, size=(96, 64), face_width=30)
    ok, png = cv2.imencode(".png", frames[0])
    for split in ("real_train", "fake_train"):
        (tmp_path / split).mkdir()
        label = split.split("_")[0]
        _tar(tmp_path / split / "1.tar.gz", {f"1/{label}/7/0.png": png.tobytes()})
    _tar(tmp_path / "real_train" / "2.tar.gz", {"2/real/8/0.png": bytes(80 * 2**20)})
    (tmp_path / "fake_train" / "3.tar").write_bytes(b"truncated tar" * 10)
    _tar(tmp_path / "fake_train" / "...tar", {"x/fake/9/0.png": png.tobytes()}, "w")
    for _ in range(2):  # a rerun finds the same state, and refuses nothing it accepted
        result = index_wilddeepfake(tmp_path)
        assert sorted(item.video for item in result.items) == ["fake_train/1/fake/7", "real_train/1/real/7"]
        skipped = {Path(path).name: reason for path, reason in result.skipped}
        assert "times the archive's size" in skipped["2.tar.gz"]
        assert "cannot be extracted" in skipped["3.tar"] or "truncated" in skipped["3.tar"]
        assert "no usable folder name" in skipped["...tar"]


def test_archive_limits_from_the_command_line(tmp_path):
    """A user whose genuine archive exceeds a default raises that limit on `recce extract`, and only then."""
    _, png = cv2.imencode(".png", moving_face_frames(1, size=(96, 64), face_width=30)[0][0])
    for split in ("real_train", "fake_train"):
        (tmp_path / "wdf" / split).mkdir(parents=True)
        label = split.split("_")[0]
        members = {f"1/{label}/7/{i}.png": png.tobytes() for i in range(3)}
        _tar(tmp_path / "wdf" / split / "1.tar", members, "w")
    command = [sys.executable, "-m", "recce", "extract", "wilddeepfake", "--root", str(tmp_path / "wdf")]
    command += ["--face-detector", "none", "--no-progress", "--archive-max-members", "2"]
    refused = subprocess.run([*command, "--out", str(tmp_path / "a")], capture_output=True, text=True)
    assert refused.returncode == 0 and "0 items" in refused.stdout
    reasons = pd.read_csv(tmp_path / "a" / "failures.csv")["reason"]
    assert reasons.str.contains("more than 2 members (raise it with --archive-max-members)", regex=False).sum() == 2
    assert not (tmp_path / "wdf" / "extracted").exists() or not any((tmp_path / "wdf" / "extracted").rglob("*.png"))
    command[-1] = "3"
    accepted = subprocess.run([*command, "--out", str(tmp_path / "b")], capture_output=True, text=True)
    assert accepted.returncode == 0, accepted.stderr
    assert len(pd.read_parquet(tmp_path / "b" / "manifest.parquet")) == 6
    bad = subprocess.run(
        [*command, "--archive-max-bytes", "0", "--out", str(tmp_path / "c")], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "archive limits must be positive" in bad.stderr


# ---------------------------------------------------------------------------------------------- checkpoints
def _evil_pickle(path: Path, mark: Path) -> Path:
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {mark}",))

    torch.save({"model": Payload()}, path)
    return path


def test_compressed_torch_archive_refused_before_inflating(capsys, tmp_path):
    plain = tmp_path / "plain.pth"
    torch.save({"fc.weight": torch.zeros(4_000_000)}, plain)
    bomb = tmp_path / "bomb.pth"
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            target.writestr(info.filename, source.read(info.filename))
    assert bomb.stat().st_size < plain.stat().st_size / 50
    with pytest.raises(weights.CheckpointError, match=r"bomb.pth: refused, record .* is compressed"):
        weights.read_state_dict(bomb)
    result = run_cli(capsys, "convert", str(bomb), str(tmp_path / "out.safetensors"))
    assert result[0] == 2 and "is compressed" in one_line(result[2])
    assert weights.read_state_dict(plain)["fc.weight"].shape == (4_000_000,)


def test_safetensors_shapes_checked_from_the_header(tmp_path):
    path = tmp_path / "w.safetensors"
    safetensors.torch.save_file({"fc.weight": torch.zeros(2, 8), "fc.bias": torch.zeros(2)}, str(path))
    assert weights.header_shapes(path) == {"fc.weight": (2, 8), "fc.bias": (2,)}
    weights.check_shapes(path, {"fc.weight": (2, 8), "fc.bias": torch.zeros(2)})
    with pytest.raises(weights.CheckpointError, match=r"w.safetensors: .*1 wrongly shaped keys \(e.g. fc.weight\)"):
        weights.check_shapes(path, {"fc.weight": (1, 2048), "fc.bias": (2,)})
    renamed = _evil_pickle(tmp_path / "evil.safetensors", tmp_path / PAYLOAD_MARK)
    with pytest.raises(weights.CheckpointError, match="not a safetensors file"):
        weights.header_shapes(renamed)


@pytest.mark.parametrize(
    "values, ok",
    [({"input_size": 299, "num_classes": 1}, True), ({"input_size": 100000}, False), ({"input_size": 8}, False),
     ({"num_classes": 3}, False), ({"input_size": "299"}, False), ({"num_classes": True}, False)],
)  # fmt: skip
def test_metadata_values_in_plausible_ranges(values, ok):
    if ok:
        weights.check_metadata(values, "x.safetensors")
    else:
        with pytest.raises(weights.CheckpointError, match=r"x.safetensors: metadata \w+=.* is not an integer within"):
            weights.check_metadata(values, "x.safetensors")


def test_forged_metadata_json_is_one_line():
    assert weights.metadata_json({"config": '{"a": 1}'}, "config", "x") == {"a": 1}
    with pytest.raises(weights.CheckpointError, match="x: metadata 'config' is not valid JSON"):
        weights.metadata_json({"config": "{oops"}, "config", "x")
    with pytest.raises(weights.CheckpointError, match="x: metadata lacks 'architecture'"):
        weights.metadata_json({}, "architecture", "x")


def test_pickle_renamed_safetensors_given_to_detect_is_one_line(capsys, tmp_path):
    renamed = _evil_pickle(tmp_path / "evil.safetensors", tmp_path / PAYLOAD_MARK)
    image = write_image(tmp_path / "face.png", face_photo())
    result = run_cli(
        capsys, "detect", str(image), "--checkpoint", str(renamed), "--face-detector", "haar", "--no-progress"
    )
    assert result[0] == 2 and "evil.safetensors: not a recce .safetensors" in one_line(result[2])
    assert not (tmp_path / PAYLOAD_MARK).exists()


def test_written_safetensors_follow_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        path = weights.save_safetensors({"a": torch.zeros(2)}, tmp_path / "a.safetensors", {"format": "x"})
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o644
    assert weights.read_state_dict(path)["a"].shape == (2,)


# ---------------------------------------------------------------------------------------------- training
SIZE = 32
TRAIN = ["--no-progress", "data.workers=0", f"data.size={SIZE}", "model.pretrained=null", "train.batch_size=4",
         "train.val_batch_size=8", "data.datasets=null", "data.compressions=null", "data.val_split=null",
         ]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_manifest(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    rows = []
    for v in range(4):
        for f in range(3):
            path = write_image(root / f"crops/v{v}/{f}.png", rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8))
            rows.append({"path": path.relative_to(root).as_posix(), "dataset": "toy", "split": "train",
                         "video": f"v{v}", "frame": f, "label": v % 2, "method": "m", "compression": "",
                         "x1": 0, "y1": 0, "x2": SIZE, "y2": SIZE, "score": 1.0, "detector": "none"})  # fmt: skip
    return manifest.write(manifest.to_frame(rows), root / "manifest.parquet")


@pytest.mark.parametrize("label", [2, 300, 0.7, float("nan"), -1, "fake"])
def test_bad_labels_are_one_line_naming_file_column_and_row(capsys, tmp_path, tiny_manifest, label):
    frame = pd.read_parquet(tiny_manifest)
    frame["label"] = frame["label"].astype(type(label) if isinstance(label, (str, float)) else "int64")
    frame.loc[5, "label"] = label
    path = tmp_path / "bad.parquet"
    frame.to_parquet(path)
    result = run_cli(capsys, "train", *TRAIN, f"data.manifest={path}", f"train.out={tmp_path / 'run'}")
    assert result[0] == 2
    line = one_line(result[2])
    assert f"{path}: column 'label', row 5:" in line and "is not 0 (real) or 1 (fake)" in line


def test_one_class_message_reports_the_real_counts(capsys, tmp_path, tiny_manifest):
    frame = pd.read_parquet(tiny_manifest)
    frame["label"] = 1
    path = manifest.write(frame, tmp_path / "fakes.parquet")
    result = run_cli(capsys, "train", *TRAIN, f"data.manifest={path}", f"train.out={tmp_path / 'run'}")
    assert result[0] == 2 and "only one class (0 real, 12 fake frames)" in one_line(result[2])


@pytest.mark.parametrize(
    "override, message",
    [("optim.lr=-1", "optim.lr must be a positive number, got -1"),
     ("optim.betas=[0.9]", "optim.betas must be two numbers in [0, 1)"),
     ("optim.gamma=0", "optim.gamma must be a number in (0, 1]"),
     ("train.seed=-1", "train.seed must be an integer"),
     ("data.flip_p=2", "data.flip_p must be a probability in [0, 1], got 2"),
     ("train.device=tpu9", "train.device must be auto, cpu, cuda or cuda:N")],
)  # fmt: skip
def test_bad_configuration_values_are_one_line(capsys, tmp_path, tiny_manifest, override, message):
    result = run_cli(capsys, "train", *TRAIN, f"data.manifest={tiny_manifest}", f"train.out={tmp_path}", override)
    assert result[0] == 2 and message in one_line(result[2])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_device_without_a_gpu_is_one_line(capsys, tmp_path, tiny_manifest):
    result = run_cli(
        capsys, "train", *TRAIN, f"data.manifest={tiny_manifest}", f"train.out={tmp_path}", "train.device=cuda"
    )
    assert result[0] == 2 and "no CUDA device is available" in one_line(result[2])


@pytest.mark.parametrize("workers", [0, 1])
def test_missing_or_corrupt_crop_during_training_is_one_line(capsys, tmp_path, tiny_manifest, workers):
    root = tmp_path / "copy"
    frame = pd.read_parquet(tiny_manifest)
    for rel in frame["path"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes((tiny_manifest.parent / rel).read_bytes())
    path = manifest.write(frame, root / "manifest.parquet")
    for rel in frame["path"][::2]:
        (root / rel).unlink()
    forged_png(root / frame["path"][1], 40000, 40000)
    for rel in frame["path"][3::2]:
        (root / rel).write_bytes(b"not a png")
    result = run_cli(capsys, "train", *TRAIN, f"data.manifest={path}", f"train.out={tmp_path / 'run'}",
                     "train.steps=2", f"data.workers={workers}")  # fmt: skip
    assert result[0] == 2
    assert "crop is missing or not a readable image" in one_line(result[2])


def test_hostile_or_broken_last_pt_to_resume_is_one_line(capsys, tmp_path, tiny_manifest):
    run = tmp_path / "run"
    run.mkdir()
    common = ("train", *TRAIN, f"data.manifest={tiny_manifest}", f"train.out={run}", "--resume")
    _evil_pickle(run / "last.pt", tmp_path / PAYLOAD_MARK)
    result = run_cli(capsys, *common)
    assert result[0] == 2 and "last.pt: refused to load" in one_line(result[2])
    assert not (tmp_path / PAYLOAD_MARK).exists()
    (run / "last.pt").write_bytes(b"PK\x03\x04" + os.urandom(500))
    result = run_cli(capsys, *common)
    assert result[0] == 2 and "last.pt: truncated or corrupt" in one_line(result[2])
    torch.save({"model": {"x": torch.zeros(1)}, "step": "three"}, run / "last.pt")
    result = run_cli(capsys, *common)
    assert result[0] == 2 and "last.pt: not a training state this run can resume" in one_line(result[2])


def test_resume_logs_the_losses_of_the_uninterrupted_run(tmp_path, tiny_manifest):
    from recce.engine.config import load_config
    from recce.engine.train import train

    def config(out: Path):
        options = [o for o in TRAIN if o != "--no-progress"]
        return load_config(None, [f"data.manifest={tiny_manifest}", f"train.out={out}", *options, "train.steps=4",
                                  "train.log_every=2", "train.checkpoint_every=3", "optim.lr=0.001",
                                  "model.name=xception"])  # fmt: skip

    def losses(out: Path) -> dict[int, float]:
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return {row["step"]: row["loss/total"] for row in rows if "loss/total" in row}

    straight = train(config(tmp_path / "a"), progress=False)
    stopped = train(config(tmp_path / "b"), progress=False, stop_after=3)  # saves at 3, inside the 3..4 window
    assert stopped.step == 3 and not stopped.finished
    resumed = train(config(tmp_path / "b"), resume=True, progress=False)
    assert resumed.finished and sorted(losses(resumed.out)) == [2, 4]
    np.testing.assert_allclose(losses(resumed.out)[4], losses(straight.out)[4], rtol=1e-6)
