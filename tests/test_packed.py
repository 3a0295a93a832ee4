"""Packed crops: `recce extract --pack`, `recce manifest pack`, reading through ManifestDataset, the shard order.

Real faces in generated videos (tests/media.py); packed and file layouts of the same extraction must decode to the
same pixels, and a kill at any moment must leave every manifest row readable and no row twice.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from media import write_face_video, write_tiny_manifest

from recce.cli import main
from recce.data import manifest
from recce.data.dataset import ManifestDataset
from recce.data.packed import ShardReader, member_name, pack_manifest
from recce.data.video import MediaError
from recce.engine.config import ConfigError, load_config
from recce.engine.sampler import EpochSampler
from recce.engine.train import train

HAAR = ["--face-detector", "haar", "--frames", "4", "--no-progress"]
PACK = ["--pack", "--pack-size", "0.3"]  # a shard closes after each video (4 crops of ~130 kB each)
LOCATION = ["abspath", "shard", "offset", "size", manifest.SHARD_ABSPATH]
SIZE = 32


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    for i in range(4):
        write_face_video(root / "real" / f"a{i}.mp4", seed=i)
        write_face_video(root / "fake" / f"g{i}.mp4", seed=10 + i, photo="grace_hopper")
    return root


def extract(root: Path, out: Path, *options: str) -> int:
    return main(["extract", "folder", "--root", str(root), "--out", str(out), *HAAR, *options])


@pytest.fixture(scope="module")
def files(videos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("files")
    assert extract(videos, out) == 0
    return out


@pytest.fixture(scope="module")
def packed(videos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("packed")
    assert extract(videos, out, *PACK) == 0
    return out


def _shards(out: Path) -> list[Path]:
    return sorted((out / "shards").glob("*.tar"))


def _same_crops(packed_manifest: Path, files_manifest: Path) -> None:
    """Same rows apart from where the crops are, and the same decoded pixels."""
    a, b = manifest.read(packed_manifest), manifest.read(files_manifest)
    pd.testing.assert_frame_equal(
        a.drop(columns=LOCATION, errors="ignore").reset_index(drop=True),
        b.drop(columns=LOCATION, errors="ignore").reset_index(drop=True),
    )
    crops, reference = ManifestDataset(packed_manifest), ManifestDataset(files_manifest)
    assert crops.shard_codes is not None and (crops.shard_codes >= 0).all()
    for i in range(len(reference)):
        np.testing.assert_array_equal(crops.load_image(i), reference.load_image(i))


def test_packed_extraction_has_the_files_bytes_and_standard_tars(videos, files, packed):
    _same_crops(packed / "manifest.parquet", files / "manifest.parquet")
    assert extract(videos, packed, *PACK, "--scale", "1.5") == 2  # recorded with other settings: refused
    frame = manifest.read(packed / "manifest.parquet")
    assert not (packed / "crops").exists() and not list((packed / "parts" / "folder").glob("*.parquet"))
    shards = _shards(packed)
    assert [p.name for p in shards] == [f"manifest-{n:06d}.tar" for n in range(8)]  # 8 videos, one a shard
    assert set(frame["shard"]) == {f"shards/{p.name}" for p in shards}
    for shard in shards:
        rows = frame[frame["shard"] == f"shards/{shard.name}"]
        listed = subprocess.run(["tar", "-tf", str(shard)], capture_output=True, text=True, check=True).stdout
        assert sorted(listed.split()) == sorted(rows["path"])
        with tarfile.open(shard) as tar:  # sequential reading, as the webdataset library does
            members = {m.name: m for m in tar.getmembers()}
            for row in rows.itertuples():
                member = members[row.path]
                assert (member.offset_data, member.size) == (row.offset, row.size)
                assert tar.extractfile(member).read() == (files / row.path).read_bytes()


def test_extraction_shards_pack_their_own_tars_and_merge(videos, files, tmp_path):
    out = tmp_path / "out"
    for k in (1, 2):
        assert extract(videos, out, *PACK, "--shard", f"{k}/2") == 0
    names = {p.name.rsplit("-", 1)[0] for p in _shards(out)}
    assert names == {"manifest-shard-1-of-2", "manifest-shard-2-of-2"} and len(_shards(out)) == 8
    parts = [out / f"manifest-shard-{k}-of-2.parquet" for k in (1, 2)]
    assert main(["manifest", "merge", str(tmp_path / "merged" / "manifest.parquet"), *map(str, parts)]) == 0
    merged = manifest.read(tmp_path / "merged" / "manifest.parquet")
    assert merged["shard"].str.startswith("../out/shards/manifest-shard-").all()
    reference = manifest.read(files / "manifest.parquet")
    pd.testing.assert_frame_equal(
        merged.drop(columns=[*LOCATION, "path"]), reference.drop(columns=["abspath", "path"]), check_like=True
    )
    crops, expected = ManifestDataset(merged), ManifestDataset(reference)
    for i in range(len(crops)):
        np.testing.assert_array_equal(crops.load_image(i), expected.load_image(i))


def test_shard_order_is_reproducible_windowed_and_resumes_mid_epoch():
    labels = np.array([0, 1] * 60)
    groups = np.repeat(np.arange(12), 10)  # 12 shards of 10 rows
    sampler = EpochSampler(labels, batch_size=4, seed=3, groups=groups, window=3)
    rows = [r for r, _ in sampler]
    again = [r for r, _ in EpochSampler(labels, batch_size=4, seed=3, groups=groups, window=3)]
    assert rows == again and len(rows) == 120
    for start in range(0, 120, 30):  # each window of 30 rows comes from 3 shards
        assert len(set(groups[rows[start : start + 30]])) == 3
    assert rows != sorted(rows) and groups[rows].tolist() != sorted(groups[rows].tolist())
    sampler.set_position(0, start_batch=7)
    assert [r for r, _ in sampler] == rows[28:]
    sampler.set_position(1)
    assert [r for r, _ in sampler] != rows
    ranks = [list(EpochSampler(labels, 2, seed=3, groups=groups, rank=r, world_size=2)) for r in range(2)]
    assert not {r for r, _ in ranks[0]} & {r for r, _ in ranks[1]}


def _recorded(out: Path) -> dict[str, int]:
    """The shards the extraction record names (their items are done), by inode."""
    try:
        with sqlite3.connect(out / "parts" / "record.sqlite") as db:
            names = {Path(name).stem + ".tar" for (name,) in db.execute("SELECT DISTINCT rows_file FROM items")}
    except sqlite3.OperationalError:  # not created yet
        return {}
    return {name: (out / "shards" / name).stat().st_ino for name in names}


# The extraction runs at the lowest priority, so the test, which waits for its progress to send a signal, reacts
# before more work is done even on a loaded machine (else the run can finish before a Ctrl-C reaches it).
NICEST = ("nice", "-n", "19")


def _start(root: Path, out: Path, workers: int) -> subprocess.Popen:
    command = [*NICEST, sys.executable, "-m", "recce", "extract", "folder", "--root", str(root), "--out", str(out)]
    command += [*HAAR, *PACK, "--workers", str(workers)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _wait_for_records(process: subprocess.Popen, out: Path, count: int, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while len(_recorded(out)) < count:
        assert process.poll() is None, f"extraction ended early: {process.communicate()}"
        assert time.monotonic() < deadline, "no extraction progress"
        time.sleep(0.005)


def _readable_and_unique(path: Path) -> pd.DataFrame:
    frame = manifest.read(path)
    assert not frame.duplicated(["dataset", "video", "frame"]).any()
    crops = ManifestDataset(frame)
    for i in range(len(crops)):
        crops.load_image(i)
    return frame


def test_packed_extraction_resumes_after_kill_and_interrupt(videos, files, tmp_path):
    out = tmp_path / "out"
    # 1. SIGKILL the whole group (parent and its worker) once a shard is recorded: the open shard is lost
    process = _start(videos, out, workers=1)
    _wait_for_records(process, out, 1)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    killed = _recorded(out)
    assert not (out / "manifest.parquet").exists()
    # as a kill between a shard's rename and its record's commit leaves: a closed shard no record names
    orphan = out / "shards" / "manifest-000050.tar"
    orphan.write_bytes(_shards(out)[0].read_bytes())
    # 2. Ctrl-C after one more shard: a graceful stop closes and records the open shard
    process = _start(videos, out, workers=0)
    _wait_for_records(process, out, len(killed) + 1)
    os.killpg(process.pid, signal.SIGINT)
    stdout, _ = process.communicate(timeout=120)
    assert process.returncode == 130 and b"interrupted" in stdout
    assert not orphan.exists()
    interrupted = _recorded(out)
    assert {name: interrupted[name] for name in killed} == killed  # recorded shards are never redone
    partial = _readable_and_unique(out / "manifest.parquet")
    assert (
        set(partial["shard"])
        == {f"shards/{name}" for name in interrupted}
        == {f"shards/{p.name}" for p in _shards(out)}
    )
    # 3. the same command finishes the rest, redoing nothing recorded
    assert extract(videos, out, *PACK) == 0
    final = _recorded(out)
    assert {name: final[name] for name in interrupted} == interrupted and len(final) == 8
    result = _readable_and_unique(out / "manifest.parquet")
    assert set(result["shard"]) == {f"shards/{name}" for name in final}  # no shard left unreferenced
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    _same_crops(out / "manifest.parquet", files / "manifest.parquet")


def test_pack_converts_a_file_extraction(files, packed, tmp_path, capsys):
    source = files / "manifest.parquet"
    assert main(["manifest", "pack", str(source), str(tmp_path / "a"), "--no-progress"]) == 0
    assert "32 crops in 1 shards" in capsys.readouterr().out
    assert main(["manifest", "info", str(tmp_path / "a" / "manifest.parquet")]) == 0
    assert "storage: 32 crops in 1 tar shards, 0 files" in capsys.readouterr().out
    _same_crops(tmp_path / "a" / "manifest.parquet", source)
    # the same crops packed by the extraction: the same shard bytes (members in another order aside)
    with tarfile.open(tmp_path / "a" / "shards" / "manifest-000000.tar") as tar:
        assert len(tar.getmembers()) == 32
    assert main(["manifest", "pack", str(source), str(tmp_path / "a"), "--no-progress"]) == 2
    assert "already exists" in capsys.readouterr().err
    other = manifest.write(manifest.read(tmp_path / "a" / "manifest.parquet"), tmp_path / "a" / "other.parquet")
    assert main(["manifest", "pack", str(other), str(packed), "--no-progress"]) == 2
    assert "holds an extraction (parts/record.sqlite)" in capsys.readouterr().err
    # a missing and an empty crop: named, listed, counted; the rest packed
    broken = tmp_path / "broken"
    frame = manifest.read(source)
    for rel in frame["path"]:
        (broken / rel).parent.mkdir(parents=True, exist_ok=True)
        (broken / rel).write_bytes((files / rel).read_bytes())
    manifest.write(frame, broken / "manifest.parquet")
    (broken / frame["path"][3]).unlink()
    (broken / frame["path"][5]).write_bytes(b"")
    summary = pack_manifest(broken / "manifest.parquet", tmp_path / "b", limit=2**20, progress=False)
    assert summary.rows == 30 and summary.shards > 1
    failures = pd.read_csv(summary.failures_file)
    assert failures["path"].tolist() == [frame["path"][3], frame["path"][5]]
    assert "No such file or directory" in failures["reason"][0] and "empty file" in failures["reason"][1]
    kept = manifest.read(summary.manifest)
    assert kept["path"].tolist() == frame["path"].drop([3, 5]).tolist()
    crops = ManifestDataset(kept)
    assert all(
        np.array_equal(crops.load_image(i), ManifestDataset(frame).load_image(j))
        for i, j in enumerate(frame.index.drop([3, 5]))
    )
    # packing a packed manifest again copies the members from its shards
    repacked = pack_manifest(packed / "manifest.parquet", tmp_path / "c", group_videos=True, progress=False)
    assert repacked.rows == 32 and not repacked.failures
    _same_crops(repacked.manifest, source)


def test_a_damaged_shard_is_one_line_naming_shard_and_member(packed, tmp_path):
    out = tmp_path / "copy"
    shards = _shards(packed)
    (out / "shards").mkdir(parents=True)
    for shard in shards:
        (out / "shards" / shard.name).write_bytes(shard.read_bytes())
    frame = manifest.read(packed / "manifest.parquet")
    manifest.write(frame, out / "manifest.parquet")
    crops = ManifestDataset(out / "manifest.parquet")
    rows = {name: frame.index[frame["shard"] == f"shards/{name}"] for name in (p.name for p in shards)}
    first, second, third, fourth = (out / "shards" / p.name for p in shards[:4])

    def error(row: int) -> str:
        with pytest.raises(MediaError) as raised:
            crops.load_image(row)
        message = str(raised.value)
        assert "\n" not in message
        return message

    row = rows[first.name][-1]  # the last member: cut off by truncating the shard
    with open(first, "r+b") as handle:
        handle.truncate(frame["offset"][row] + frame["size"][row] // 2)
    assert error(row) == f"{first}: member {frame['path'][row]} is truncated (the shard ends before byte " + (
        f"{frame['offset'][row] + frame['size'][row]} of it)"
    )
    row = rows[second.name][1]
    with open(second, "r+b") as handle:  # the header's checksum no longer matches
        handle.seek(frame["offset"][row] - 512)
        handle.write(b"garbage!")
    assert error(row) == f"{second}: member {frame['path'][row]}: no tar header of its size at offset " + str(
        frame["offset"][row] - 512
    )
    row = rows[third.name][0]
    with open(third, "r+b") as handle:  # the image's own bytes overwritten
        handle.seek(frame["offset"][row])
        handle.write(b"\0" * 64)
    assert error(row) == f"{third}: member {frame['path'][row]} is not a readable image"
    fourth.unlink()
    row = rows[fourth.name][0]
    assert error(row) == f"{fourth}: shard not found (member {frame['path'][row]})"
    # the intact rows still read, in a forked DataLoader worker too (each reopens the shards)
    intact = ManifestDataset(frame.iloc[list(rows[second.name][2:])].assign(**{manifest.SHARD_ABSPATH: str(second)}))
    loader = __import__("torch").utils.data.DataLoader(intact, batch_size=2, num_workers=1)
    assert sum(len(labels) for _, labels in loader) == len(intact)


def test_a_reader_keeps_a_bounded_number_of_shards_open(files, packed):
    frame = manifest.read(packed / "manifest.parquet")
    descriptors = lambda: len(os.listdir("/proc/self/fd"))  # noqa: E731
    before = descriptors()
    reader = ShardReader(max_open=3)
    for row in frame.itertuples():  # 8 shards, each visited in turn
        data = reader.read(row.shard_abspath, row.offset, row.size, row.path)
        assert data == (files / row.path).read_bytes()
        assert descriptors() - before <= 3
    reader.close()
    assert descriptors() == before


def test_member_names_never_leave_the_folder():
    assert member_name("crops/ffpp/000/000001.png") == "crops/ffpp/000/000001.png"
    for path in ("../other/1.png", "/abs/1.png", "a/./1.png", "a//1.png"):
        name = member_name(path)
        assert name.startswith("#hashed/") and name.endswith(".png") and ".." not in name
    assert member_name("../x.png") != member_name("../y.png")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    """A toy manifest of crop files and the same crops packed (four rows a shard)."""
    root = tmp_path_factory.mktemp("tiny")
    source = write_tiny_manifest(root, SIZE)
    summary = pack_manifest(source, root / "packed", limit=1, progress=False)
    assert summary.shards == summary.rows
    return source, summary.manifest


def _config(out: Path, manifest_path: Path, *extra: str):
    overrides = [f"data.manifest={manifest_path}", f"data.size={SIZE}", "data.workers=0", "model.pretrained=null",
                 "train.batch_size=4", "train.log_every=1", f"train.out={out}", "optim.lr=0.001",
                 "data.datasets=null", "data.compressions=null", "data.val_split=val", "train.val_every=3",
                 "train.steps=3", *extra]  # fmt: skip
    return load_config(Path(__file__).parents[1] / "configs" / "recce" / "ffpp_c23.yaml", overrides)


def _losses(run: Path) -> list[float]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss/total"] for r in lines if "loss/total" in r]


def test_training_and_evaluation_read_packed_crops_as_files(tiny, tmp_path, one_torch_thread):
    source, packed_manifest = tiny
    files_run = train(_config(tmp_path / "files", source), progress=False)
    packed_run = train(_config(tmp_path / "packed", packed_manifest), progress=False)
    assert len(_losses(files_run.out)) == 3
    assert _losses(packed_run.out) == _losses(files_run.out)  # same pixels, same paths, so the same seeds
    shards_run = train(_config(tmp_path / "shards", packed_manifest, "data.order=shards"), progress=False)
    assert shards_run.finished and len(_losses(shards_run.out)) == 3
    with pytest.raises(ConfigError, match="data.order=shards needs packed crops"):
        train(_config(tmp_path / "refused", source, "data.order=shards"), progress=False)
    checkpoint = str(packed_run.out / "final.safetensors")
    common = ["--checkpoint", checkpoint, "--workers", "0", "--bootstrap", "10", "--no-progress"]
    for name, path in (("files", source), ("packed", packed_manifest)):
        assert main(["evaluate", *common, "--manifest", str(path), "--out", str(tmp_path / f"eval-{name}")]) == 0
    scores = [pd.read_csv(tmp_path / f"eval-{name}" / "scores.csv") for name in ("files", "packed")]
    pd.testing.assert_frame_equal(scores[0].drop(columns="abspath"), scores[1].drop(columns=LOCATION))
    for name, path in (("files", source), ("packed", packed_manifest)):
        argv = ["visualize", "--checkpoint", checkpoint, "--manifest", str(path), "--limit", "2", "--device", "cpu"]
        assert main([*argv, "--out", str(tmp_path / f"maps-{name}")]) == 0
    panels = [sorted((tmp_path / f"maps-{name}").glob("*.png")) for name in ("files", "packed")]
    assert len(panels[0]) == 2 and [p.name for p in panels[0]] == [p.name for p in panels[1]]
    assert (tmp_path / "maps-files" / "index.md").read_text() == (tmp_path / "maps-packed" / "index.md").read_text()
    # a missing shard is refused before scoring, naming it
    (packed_manifest.parent / manifest.read(packed_manifest)["shard"].iloc[-1]).rename(tmp_path / "moved.tar")
    assert main(["evaluate", *common, "--manifest", str(packed_manifest), "--out", str(tmp_path / "e")]) == 2
    (tmp_path / "moved.tar").rename(packed_manifest.parent / manifest.read(packed_manifest)["shard"].iloc[-1])


def test_landmarks_are_added_to_a_packed_manifest_as_to_files(tiny, tmp_path):
    from recce.data.faces import build_detector
    from recce.data.landmarks import add_landmarks

    results = []
    for path in tiny:
        target = path.with_name(f"landmarks-{tmp_path.name}.parquet")
        summary = add_landmarks(path, build_detector("haar"), out=target, redo=True, progress=False)
        assert summary.rows == summary.todo == 64 and not summary.failures
        results.append(manifest.read(target))
    assert results[1]["shard"].notna().all()
    for column in (manifest.LANDMARKS_SOURCE, manifest.LANDMARKS):
        assert [str(v) for v in results[0][column]] == [str(v) for v in results[1][column]]


def test_merged_manifest_mixes_files_and_shards(tiny, tmp_path):
    source, packed_manifest = tiny
    frame = manifest.read(source)
    half = manifest.write(frame[frame["split"] == "train"], source.parent / "train-files.parquet")
    rest = manifest.read(packed_manifest)
    other = manifest.write(rest[rest["split"] != "train"], packed_manifest.parent / "rest-packed.parquet")
    merged = manifest.merge([half, other], tmp_path / "merged.parquet")
    assert merged["shard"].isna().sum() == (frame["split"] == "train").sum()
    crops, reference = ManifestDataset(tmp_path / "merged.parquet"), ManifestDataset(source)
    keys = [list(zip(d.frame["video"], d.frame["frame"], strict=True)) for d in (crops, reference)]
    assert sorted(keys[0]) == sorted(keys[1])
    for i, key in enumerate(keys[0]):
        np.testing.assert_array_equal(crops.load_image(i), reference.load_image(keys[1].index(key)))


def test_packed_rows_stay_compact():
    rows = 4000
    frame = manifest.to_frame(
        pd.DataFrame(
            {
                "path": [
                    f"crops/dfdc/dfdc_train_part_{i % 50}/video{i // 32:06d}/{i % 32:06d}.png" for i in range(rows)
                ],
                "dataset": "dfdc",
                "split": "train",
                "video": [f"v{i // 32}" for i in range(rows)],
                "frame": np.arange(rows) % 32,
                "label": np.arange(rows) // 32 % 2,
                "method": "m",
                "compression": "",
                "x1": 0.0,
                "y1": 0.0,
                "x2": 1.0,
                "y2": 1.0,
                "score": 1.0,
                "detector": "none",
            }
        )  # fmt: skip
    )
    packed = frame.assign(
        shard=[f"shards/manifest-{i // 2000:06d}.tar" for i in range(rows)], offset=np.arange(rows) * 4096, size=3000
    )
    plain, dense = ManifestDataset(frame), ManifestDataset(packed)
    assert dense.nbytes / rows <= plain.nbytes / rows + 15 and dense.nbytes / rows <= 200
    assert dense.shard_codes.dtype == np.int8
