"""Dataset indexers on miniature copies of each publisher's layout (dummy videos, real tar archives)."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from recce.data.indexers import INDEXERS, DatasetLayoutError, IndexResult, MediaItem, base, index_dataset, shard_items

FFPP_PAIRS = {
    "train": [["000", "003"], ["001", "004"], ["002", "005"]],
    "val": [["006", "007"]],
    "test": [["008", "009"]],
}
FFPP_METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures")


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0")
    return path


def by_video(result: IndexResult) -> dict[str, MediaItem]:
    return {item.video: item for item in result.items}


def split_counts(result: IndexResult) -> Counter:
    return Counter((item.split, item.label) for item in result.items)


# ---------------------------------------------------------------- FaceForensics++


def make_ffpp(root: Path, compressions=("c23",), methods=FFPP_METHODS) -> Path:
    """Dataset files for every pair, plus the split jsons in root/splits."""
    splits_dir = root / "splits"
    splits_dir.mkdir(parents=True)
    for split, pairs in FFPP_PAIRS.items():
        (splits_dir / f"{split}.json").write_text(json.dumps(pairs))
        for compression in compressions:
            for a, b in pairs:
                for video_id in (a, b):
                    touch(root / "original_sequences/youtube" / compression / "videos" / f"{video_id}.mp4")
                for method in methods:
                    for fake in (f"{a}_{b}", f"{b}_{a}"):
                        touch(root / "manipulated_sequences" / method / compression / "videos" / f"{fake}.mp4")
    return splits_dir


def test_ffpp_pairs_put_reals_and_both_fakes_in_the_pair_split(tmp_path: Path) -> None:
    splits_dir = make_ffpp(tmp_path)
    result = index_dataset("ffpp", tmp_path, splits_dir=splits_dir)
    # 3/1/1 pairs -> 6/2/2 reals and 6/2/2 fakes per method
    assert split_counts(result) == {
        ("train", 0): 6,
        ("train", 1): 24,
        ("val", 0): 2,
        ("val", 1): 8,
        ("test", 0): 2,
        ("test", 1): 8,
    }
    items = by_video(result)
    for split, pairs in FFPP_PAIRS.items():
        for a, b in pairs:
            for video_id in (a, b):
                real = items[f"youtube/c23/{video_id}"]
                assert (real.split, real.label, real.method, real.kind) == (split, 0, "youtube", "video")
                assert real.source == tmp_path / "original_sequences/youtube/c23/videos" / f"{video_id}.mp4"
            for method in FFPP_METHODS:
                for fake in (f"{a}_{b}", f"{b}_{a}"):
                    item = items[f"{method}/c23/{fake}"]
                    assert (item.split, item.label, item.method, item.compression) == (
                        split,
                        1,
                        method,
                        "c23",
                    )
                    assert item.source.is_file()
    assert result.skipped == []


def test_ffpp_selects_methods_and_compressions(tmp_path: Path) -> None:
    splits_dir = make_ffpp(tmp_path, compressions=("c23", "c40"), methods=("Deepfakes", "FaceShifter"))
    result = index_dataset(
        "ffpp", tmp_path, splits_dir=splits_dir, compressions=["c23", "c40"], methods=["FaceShifter"]
    )
    assert Counter((i.method, i.compression) for i in result.items) == {
        ("youtube", "c23"): 10,
        ("youtube", "c40"): 10,
        ("FaceShifter", "c23"): 10,
        ("FaceShifter", "c40"): 10,
    }
    with pytest.raises(ValueError, match="compressions: unknown c0"):
        index_dataset("ffpp", tmp_path, splits_dir=splits_dir, compressions="c0")
    with pytest.raises(DatasetLayoutError, match="Face2Face/c23/videos: FF\\+\\+ video folder not found"):
        index_dataset("ffpp", tmp_path, splits_dir=splits_dir, methods=["Face2Face"])


def test_ffpp_missing_split_file_is_named(tmp_path: Path) -> None:
    splits_dir = make_ffpp(tmp_path)
    (splits_dir / "val.json").unlink()
    with pytest.raises(DatasetLayoutError, match=r"val\.json: file not found"):
        index_dataset("ffpp", tmp_path, splits_dir=splits_dir)


def test_ffpp_malformed_or_overlapping_split_files(tmp_path: Path) -> None:
    splits_dir = make_ffpp(tmp_path)
    (splits_dir / "test.json").write_text('[["008", "009"],')
    with pytest.raises(DatasetLayoutError, match=r"test\.json: malformed JSON \(.* at line 1 column"):
        index_dataset("ffpp", tmp_path, splits_dir=splits_dir)
    (splits_dir / "test.json").write_text('[["008", "009", "010"]]')
    with pytest.raises(DatasetLayoutError, match=r"test\.json: entry 0 is .*expected a pair"):
        index_dataset("ffpp", tmp_path, splits_dir=splits_dir)
    (splits_dir / "test.json").write_text('[["008", "000"]]')
    with pytest.raises(DatasetLayoutError, match=r"test\.json: video id 000 is also in .*train\.json"):
        index_dataset("ffpp", tmp_path, splits_dir=splits_dir)


def test_ffpp_missing_video_is_an_error_or_a_counted_skip(tmp_path: Path) -> None:
    splits_dir = make_ffpp(tmp_path)
    gone = [
        tmp_path / "manipulated_sequences/FaceSwap/c23/videos/003_000.mp4",
        tmp_path / "original_sequences/youtube/c23/videos/009.mp4",
    ]
    for path in gone:
        path.unlink()
    with pytest.raises(DatasetLayoutError, match=r"003_000\.mp4: listed in .*train\.json but missing on disk"):
        index_dataset("ffpp", tmp_path, splits_dir=splits_dir)
    result = index_dataset("ffpp", tmp_path, splits_dir=splits_dir, allow_missing=True)
    assert sorted(path for path, _ in result.skipped) == sorted(str(p) for p in gone)
    assert len(result.items) == 5 * 10 - 2
    assert "FaceSwap/c23/003_000" not in by_video(result) and "Deepfakes/c23/003_000" in by_video(result)


# ---------------------------------------------------------------- Celeb-DF v2

CELEB_FILES = {
    "Celeb-real": [
        "id0_0000",
        "id0_0001",
        "id1_0000",
        "id1_0001",
        "id2_0000",
        "id3_0000",
        "id4_0000",
        "id5_0000",
    ],
    "YouTube-real": ["00000", "00001", "00002", "00003"],
    "Celeb-synthesis": [
        "id0_id1_0000",
        "id0_id2_0001",
        "id1_id0_0000",
        "id1_id3_0001",
        "id2_id0_0000",
        "id3_id5_0000",
        "id4_id1_0000",
        "id5_id4_0000",
    ],
}
CELEB_TEST_LIST = "1 Celeb-real/id0_0000.mp4\n1 YouTube-real/00000.mp4\n0 Celeb-synthesis/id0_id1_0000.mp4\n\n"


def make_celebdf(root: Path, test_list: str = CELEB_TEST_LIST) -> None:
    for folder, stems in CELEB_FILES.items():
        for stem in stems:
            touch(root / folder / f"{stem}.mp4")
    (root / "List_of_testing_videos.txt").write_text(test_list)


def test_celebdf_test_list_with_inverted_labels_and_train_is_the_rest(tmp_path: Path) -> None:
    make_celebdf(tmp_path)
    result = index_dataset("celebdf", tmp_path)
    items = by_video(result)
    test = {video: (item.label, item.method) for video, item in items.items() if item.split == "test"}
    assert test == {  # the list's 1 = real became our 0 = real
        "Celeb-real/id0_0000": (0, "Celeb-real"),
        "YouTube-real/00000": (0, "YouTube-real"),
        "Celeb-synthesis/id0_id1_0000": (1, "Celeb-synthesis"),
    }
    train = [item for item in result.items if item.split == "train"]
    assert len(train) == sum(len(stems) for stems in CELEB_FILES.values()) - 3
    assert not {item.video for item in train} & set(test)
    assert all(item.label == (item.method == "Celeb-synthesis") for item in result.items)
    assert items["Celeb-real/id1_0000"].source == tmp_path / "Celeb-real/id1_0000.mp4"


def test_celebdf_test_list_number_contradicting_folder_is_an_error(tmp_path: Path) -> None:
    make_celebdf(tmp_path, test_list="1 Celeb-real/id0_0000.mp4\n1 Celeb-synthesis/id0_id1_0000.mp4\n")
    with pytest.raises(DatasetLayoutError, match=r"List_of_testing_videos\.txt:2: number 1 \(1 = real\) disagrees"):
        index_dataset("celebdf", tmp_path)


def test_celebdf_missing_test_video_is_an_error_or_a_counted_skip(tmp_path: Path) -> None:
    make_celebdf(tmp_path)
    (tmp_path / "YouTube-real/00000.mp4").unlink()
    with pytest.raises(DatasetLayoutError, match=r"00000\.mp4: listed in .*List_of_testing_videos\.txt but missing"):
        index_dataset("celebdf", tmp_path)
    result = index_dataset("celebdf", tmp_path, allow_missing=True)
    assert len(result.skipped) == 1 and "YouTube-real/00000" not in by_video(result)


def test_celebdf_validation_is_carved_by_target_identity(tmp_path: Path) -> None:
    make_celebdf(tmp_path)
    result = index_dataset("celebdf", tmp_path, val_fraction=0.5)
    assert result == index_dataset("celebdf", tmp_path, val_fraction=0.5)  # deterministic
    groups: dict[str, set[str]] = {}
    for item in result.items:
        if item.split != "test" and item.method != "YouTube-real":
            target = Path(item.video).name.split("_")[0]
            groups.setdefault(target, set()).add(item.split)
    assert all(len(splits) == 1 for splits in groups.values())  # no target identity in both
    val_identities = {target for target, splits in groups.items() if splits == {"val"}}
    assert len(val_identities) == 3  # round(0.5 * 6 identities)
    youtube = Counter(item.split for item in result.items if item.method == "YouTube-real")
    assert youtube == {"test": 1, "val": 2, "train": 1}  # round(0.5 * 3 training YouTube videos) = 2
    assert {item.video for item in result.items if item.split == "test"} == {
        "Celeb-real/id0_0000",
        "YouTube-real/00000",
        "Celeb-synthesis/id0_id1_0000",
    }


# ---------------------------------------------------------------- DFDC


def make_dfdc(root: Path) -> None:
    for part in range(3):
        folder = root / f"dfdc_train_part_{part}"
        metadata = {}
        for clip in range(4):
            name = f"p{part}c{clip}.mp4"
            touch(folder / name)
            metadata[name] = {"label": "FAKE", "split": "train", "original": "x.mp4"} if clip else {"label": "REAL"}
        (folder / "metadata.json").write_text(json.dumps(metadata))
    touch(root / "dfdc_train_part_3" / "orphan.mp4")  # a part without metadata.json
    for name in ("t0.mp4", "t1.mp4", "t2.mp4"):
        touch(root / "test" / name)
    (root / "test" / "labels.csv").write_text("filename,label\nt0.mp4,1\nt1.mp4,0\nt2.mp4,1\n")


def test_dfdc_parts_test_labels_and_default_val_part(tmp_path: Path) -> None:
    make_dfdc(tmp_path)
    result = index_dataset("dfdc", tmp_path)
    assert split_counts(result) == {
        ("train", 0): 2,
        ("train", 1): 6,
        ("val", 0): 1,
        ("val", 1): 3,
        ("test", 0): 1,
        ("test", 1): 2,
    }
    items = by_video(result)
    assert {item.video.split("/")[0] for item in result.items if item.split == "val"} == {"dfdc_train_part_2"}
    assert (items["test/t1"].label, items["test/t0"].label, items["test/t0"].method) == (0, 1, "DFDC")
    assert (items["dfdc_train_part_0/p0c0"].label, items["dfdc_train_part_0/p0c0"].method) == (0, "original")
    assert items["dfdc_train_part_1/p1c3"].source == tmp_path / "dfdc_train_part_1/p1c3.mp4"
    assert result.skipped == [(str(tmp_path / "dfdc_train_part_3"), "no metadata.json in this training part")]
    assert result == index_dataset("dfdc", tmp_path)  # deterministic


def test_dfdc_val_parts_option(tmp_path: Path) -> None:
    make_dfdc(tmp_path)
    for val_parts in ([0], ["dfdc_train_part_0"], "0"):
        result = index_dataset("dfdc", tmp_path, val_parts=val_parts)
        val_parts_found = {item.video.split("/")[0] for item in result.items if item.split == "val"}
        assert val_parts_found == {"dfdc_train_part_0"}
    assert not [item for item in index_dataset("dfdc", tmp_path, val_parts=[]).items if item.split == "val"]
    with pytest.raises(DatasetLayoutError, match="val_parts names dfdc_train_part_3, not present"):
        index_dataset("dfdc", tmp_path, val_parts=[3])


def test_dfdc_malformed_metadata_and_labels_are_named(tmp_path: Path) -> None:
    make_dfdc(tmp_path)
    metadata = tmp_path / "dfdc_train_part_1" / "metadata.json"
    metadata.write_text('{"p1c0.mp4": {"label": "REAL"}')
    with pytest.raises(DatasetLayoutError, match=r"dfdc_train_part_1/metadata\.json: malformed JSON"):
        index_dataset("dfdc", tmp_path)
    metadata.write_text('{"p1c0.mp4": {"label": "MAYBE"}}')
    with pytest.raises(DatasetLayoutError, match=r"metadata\.json: entry 'p1c0\.mp4' has no label REAL or FAKE"):
        index_dataset("dfdc", tmp_path)
    metadata.write_text('{"p1c0.mp4": {"label": "REAL"}}')
    (tmp_path / "test" / "labels.csv").write_text("filename,label\nt0.mp4,1\nt1.mp4,fake\n")
    with pytest.raises(DatasetLayoutError, match=r"labels\.csv:3: expected '<id>\.mp4,<0\|1>'"):
        index_dataset("dfdc", tmp_path)


# ---------------------------------------------------------------- DFDC-Preview


def make_dfdcp(root: Path) -> dict[str, dict[str, str]]:
    records = {}
    for n in range(24):
        top, label = ("original_videos", "real") if n % 3 == 0 else (("method_A", "method_B")[n % 2], "fake")
        relative = f"{top}/{1000 + n}/{2000 + n}/clip{n}.mp4"
        touch(root / relative)
        records[relative] = {"label": label, "set": "test" if n < 6 else "train"}
    (root / "dataset.json").write_text(json.dumps(records))
    return records


def test_dfdcp_set_and_label_fields(tmp_path: Path) -> None:
    records = make_dfdcp(tmp_path)
    result = index_dataset("dfdcp", tmp_path)
    items = by_video(result)
    assert len(items) == len(records)
    for relative, record in records.items():
        item = items[relative.removesuffix(".mp4")]
        assert item.split == record["set"]
        assert item.label == (record["label"] == "fake")
        assert item.method == relative.split("/")[0]
        assert item.source == tmp_path / relative


def test_dfdcp_val_fraction_is_deterministic_and_leaves_test_alone(tmp_path: Path) -> None:
    records = make_dfdcp(tmp_path)
    result = index_dataset("dfdcp", tmp_path, val_fraction=0.5)
    assert result == index_dataset("dfdcp", tmp_path, val_fraction=0.5)
    splits = Counter(item.split for item in result.items)
    assert splits["test"] == 6 and splits["val"] > 0 and splits["train"] > 0
    assert {i.video for i in result.items if i.split != "test"} == {
        r.removesuffix(".mp4") for r, record in records.items() if record["set"] == "train"
    }
    records["method_B/1007/2007/clip7.mp4"]["set"] = "validation"
    (tmp_path / "dataset.json").write_text(json.dumps(records))
    with pytest.raises(DatasetLayoutError, match=r"dataset\.json: entry 'method_B/1007/2007/clip7\.mp4' needs"):
        index_dataset("dfdcp", tmp_path)


# ---------------------------------------------------------------- WildDeepfake


def png_bytes(value: int) -> bytes:
    ok, encoded = cv2.imencode(".png", np.full((6, 6, 3), value, dtype=np.uint8))
    assert ok
    return encoded.tobytes()


def write_tar(path: Path, files: dict[str, bytes], mode: str = "w") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def make_wilddeepfake(root: Path) -> None:
    write_tar(root / "real_train/1.tar.gz", {"1/real/0/0.png": png_bytes(1), "1/real/0/1.png": png_bytes(2)})
    write_tar(root / "real_train/2.tar.gz", {"2/real/7/0.png": png_bytes(3), "2/real/8/0.png": png_bytes(4)})
    write_tar(root / "fake_train/3.tar.gz", {"3/fake/5/0.png": png_bytes(5)}, mode="w:gz")
    write_tar(root / "real_test/4.tar.gz", {"4/real/6/0.png": png_bytes(6)})
    frame = root / "fake_test/9/fake/11/0.png"  # extracted by the user beside its archive
    frame.parent.mkdir(parents=True)
    frame.write_bytes(png_bytes(7))
    write_tar(root / "fake_test/9.tar.gz", {"9/fake/11/0.png": png_bytes(7)})


def test_wilddeepfake_archives_become_frame_sequences(tmp_path: Path) -> None:
    make_wilddeepfake(tmp_path)
    result = index_dataset("wilddeepfake", tmp_path)
    items = by_video(result)
    assert {video: (item.split, item.label) for video, item in items.items()} == {
        "real_train/1/real/0": ("train", 0),
        "real_train/2/real/7": ("train", 0),
        "real_train/2/real/8": ("train", 0),
        "fake_train/3/fake/5": ("train", 1),
        "real_test/4/real/6": ("test", 0),
        "fake_test/9/fake/11": ("test", 1),
    }
    assert all(item.kind == "frames" for item in result.items)
    sequence = items["real_train/1/real/0"].source
    assert sequence == tmp_path / "extracted/real_train/1/1/real/0"
    assert cv2.imread(str(sequence / "1.png"))[0, 0].tolist() == [2, 2, 2]
    assert items["fake_test/9/fake/11"].source == tmp_path / "fake_test/9/fake/11"
    assert not (tmp_path / "extracted/fake_test").exists()  # already extracted, so not extracted again


def test_wilddeepfake_val_fraction_moves_whole_training_archives(tmp_path: Path) -> None:
    make_wilddeepfake(tmp_path)
    everything = by_video(index_dataset("wilddeepfake", tmp_path, val_fraction=0.99))
    assert {v: i.split for v, i in everything.items() if "_train/" in v} == {
        "real_train/1/real/0": "val",
        "real_train/2/real/7": "val",
        "real_train/2/real/8": "val",
        "fake_train/3/fake/5": "val",
    }
    assert everything["real_test/4/real/6"].split == "test"  # test archives never move
    some = by_video(index_dataset("wilddeepfake", tmp_path, val_fraction=0.5))
    assert some["real_train/2/real/7"].split == some["real_train/2/real/8"].split  # an archive stays together
    with pytest.raises(ValueError, match="val_fraction must be in"):
        index_dataset("wilddeepfake", tmp_path, val_fraction=1.5)


def test_wilddeepfake_resumes_without_re_extracting(tmp_path: Path) -> None:
    make_wilddeepfake(tmp_path)
    first = index_dataset("wilddeepfake", tmp_path, extract_to=tmp_path / "faces")
    frame = tmp_path / "faces/real_train/1/1/real/0/0.png"
    frame.write_bytes(png_bytes(200))
    (tmp_path / "faces/real_train/.2.partial").mkdir()  # as if a run was killed while extracting archive 2
    (tmp_path / "faces/real_train/2").rename(tmp_path / "faces/real_train/.2.partial/2")
    second = index_dataset("wilddeepfake", tmp_path, extract_to=tmp_path / "faces")
    assert second == first
    assert frame.read_bytes() == png_bytes(200)  # the finished archive was not extracted again
    assert sorted(p.name for p in (tmp_path / "faces/real_train").iterdir()) == ["1", "2"]


def test_wilddeepfake_keeps_extractions_whose_archives_were_deleted(tmp_path: Path) -> None:
    make_wilddeepfake(tmp_path)
    first = index_dataset("wilddeepfake", tmp_path)
    for extracted_archive in ("real_train/1.tar.gz", "real_train/2.tar.gz", "fake_train/3.tar.gz"):
        (tmp_path / extracted_archive).unlink()
    (tmp_path / "fake_train").rmdir()
    assert index_dataset("wilddeepfake", tmp_path) == first


def test_wilddeepfake_extracting_beside_the_archives_keeps_video_ids(tmp_path: Path) -> None:
    make_wilddeepfake(tmp_path)
    first = index_dataset("wilddeepfake", tmp_path, extract_to=tmp_path)
    assert (tmp_path / "real_train/1/1/real/0/0.png").is_file()
    assert index_dataset("wilddeepfake", tmp_path, extract_to=tmp_path) == first
    assert {item.video for item in first.items} == {
        item.video for item in index_dataset("wilddeepfake", tmp_path, extract_to=tmp_path / "other").items
    }


def test_wilddeepfake_reports_missing_folders_and_contradicting_labels(tmp_path: Path) -> None:
    write_tar(tmp_path / "fake_test/1.tar", {"1/fake/0/0.png": png_bytes(1)})
    result = index_dataset("wilddeepfake", tmp_path)
    assert [video for video in by_video(result)] == ["fake_test/1/fake/0"]
    assert sorted(Path(path).name for path, _ in result.skipped) == ["fake_train", "real_test", "real_train"]
    write_tar(tmp_path / "real_test/2.tar", {"2/fake/0/0.png": png_bytes(1)})
    with pytest.raises(DatasetLayoutError, match=r"label folder 'fake' contradicts its archive folder real_test"):
        index_dataset("wilddeepfake", tmp_path)


# ---------------------------------------------------------------- user folders


def make_user_folder(base: Path) -> None:
    touch(base / "real/a.mp4")
    touch(base / "real/b.JPG")
    touch(base / "real/seq1/0.png")
    touch(base / "real/seq1/1.png")
    touch(base / "real/.DS_Store")
    touch(base / "real/notes.txt")
    touch(base / "fake/a.mp4")
    touch(base / "fake/stylegan/x.webm")
    touch(base / "fake/faceswap/seq2/0.png")


def test_folder_without_split_folders_is_all_test(tmp_path: Path) -> None:
    make_user_folder(tmp_path)
    result = index_dataset("folder", tmp_path)
    assert {video: (i.split, i.label, i.kind, i.method) for video, i in by_video(result).items()} == {
        "real/a": ("test", 0, "video", "real"),
        "real/b": ("test", 0, "image", "real"),
        "real/seq1": ("test", 0, "frames", "real"),
        "fake/a": ("test", 1, "video", "fake"),
        "fake/stylegan/x": ("test", 1, "video", "stylegan"),
        "fake/faceswap/seq2": ("test", 1, "frames", "faceswap"),
    }
    assert by_video(result)["real/seq1"].source == tmp_path / "real/seq1"
    assert result.skipped == [(str(tmp_path / "real/notes.txt"), "not a video, image or frame folder")]


def test_folder_fractions_split_deterministically_by_name(tmp_path: Path) -> None:
    for n in range(40):
        touch(tmp_path / "real" / f"clip{n}.mp4")
        touch(tmp_path / "fake" / f"clip{n}.mp4")
    result = index_dataset("folder", tmp_path, val_fraction=0.25, test_fraction=0.25)
    assert result == index_dataset("folder", tmp_path, val_fraction=0.25, test_fraction=0.25)
    assert set(Counter(item.split for item in result.items)) == {"train", "val", "test"}
    items = by_video(result)
    assert all(items[f"real/clip{n}"].split == items[f"fake/clip{n}"].split for n in range(40))
    touch(tmp_path / "real" / "clip40.mp4")  # adding a file moves no other file between splits
    grown = by_video(index_dataset("folder", tmp_path, val_fraction=0.25, test_fraction=0.25))
    assert all(grown[video].split == item.split for video, item in items.items())
    with pytest.raises(ValueError, match="val_fraction \\+ test_fraction must be at most 1"):
        index_dataset("folder", tmp_path, val_fraction=0.6, test_fraction=0.6)


def test_folder_with_split_folders(tmp_path: Path) -> None:
    make_user_folder(tmp_path / "train")
    touch(tmp_path / "val/fake/v.mov")
    touch(tmp_path / "test/real/t.png")
    result = index_dataset("folder", tmp_path)
    assert Counter(item.split for item in result.items) == {"train": 6, "val": 1, "test": 1}
    items = by_video(result)
    assert (items["val/fake/v"].label, items["test/real/t"].kind) == (1, "image")
    assert (items["train/fake/stylegan/x"].split, items["train/fake/stylegan/x"].method) == (
        "train",
        "stylegan",
    )
    with pytest.raises(ValueError, match="has split folders, so val_fraction and test_fraction do not apply"):
        index_dataset("folder", tmp_path, test_fraction=0.2)
    touch(tmp_path / "real/extra.mp4")
    with pytest.raises(DatasetLayoutError, match="holds both split folders .* and class folders"):
        index_dataset("folder", tmp_path)


def test_folder_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match="no real/ or fake/ folder inside"):
        index_dataset("folder", tmp_path)
    touch(tmp_path / "real/a.mp4")
    touch(tmp_path / "real/a.png")
    with pytest.raises(DatasetLayoutError, match=r"video id 'real/a' also used by .*a\.mp4"):
        index_dataset("folder", tmp_path)


# ---------------------------------------------------------------- registry


def test_index_dataset_checks_name_options_and_root(tmp_path: Path) -> None:
    assert set(INDEXERS) == {"ffpp", "celebdf", "dfdc", "dfdcp", "wilddeepfake", "folder"}
    with pytest.raises(ValueError, match="unknown dataset 'ff'"):
        index_dataset("ff", tmp_path)
    with pytest.raises(ValueError, match="ffpp: option\\(s\\) splits_dir required"):
        index_dataset("ffpp", tmp_path)
    with pytest.raises(ValueError, match="celebdf: unknown option\\(s\\) val_fractoin; accepted: val_fraction"):
        index_dataset("celebdf", tmp_path, val_fractoin=0.1)
    with pytest.raises(DatasetLayoutError, match="nowhere: dataset root folder not found"):
        index_dataset("dfdcp", tmp_path / "nowhere")


# ---------------------------------------------------------------- shards


def make_each(root: Path) -> dict[str, dict]:
    """Every fixture above, each under its own root, with the options it is indexed with."""
    (root / "celebdf").mkdir(parents=True)
    make_celebdf(root / "celebdf")
    make_dfdc(root / "dfdc")
    make_dfdcp(root / "dfdcp")
    make_wilddeepfake(root / "wilddeepfake")
    make_user_folder(root / "folder")
    return {
        "ffpp": {"splits_dir": make_ffpp(root / "ffpp")},
        "celebdf": {"val_fraction": 0.3},
        "dfdc": {},
        "dfdcp": {"val_fraction": 0.2},
        "wilddeepfake": {"val_fraction": 0.5},
        "folder": {"test_fraction": 0.3, "val_fraction": 0.3},
    }


def assert_shards_as_today(name: str, root: Path, options: dict, sizes=(1, 2, 3, 5)) -> None:
    """Each shard's index is exactly today's whole index cut by `shard_items`, in the index's own order."""
    whole = index_dataset(name, root, **options)
    for n in sizes:
        seen = []
        for k in range(1, n + 1):
            sharded = index_dataset(name, root, shard=(k, n), **options)
            expected = [item for item in whole.items if item in set(shard_items(whole.items, (k, n)))]
            assert sharded.items == expected, (name, k, n)
            assert shard_items(sharded.items, None) == shard_items(whole.items, (k, n))
            assert sharded.skipped == whole.skipped and sharded.shard == (k, n)
            seen += sharded.items
        assert sorted(item.video for item in seen) == sorted(item.video for item in whole.items)


def test_every_indexer_gives_each_shard_todays_items(tmp_path: Path) -> None:
    for name, options in make_each(tmp_path).items():
        assert_shards_as_today(name, tmp_path / name, options)


def test_a_shard_checks_only_its_own_files(tmp_path: Path, monkeypatch) -> None:
    make_dfdc(tmp_path)
    whole = len(index_dataset("dfdc", tmp_path).items)
    stats = []
    identity = base.file_identity
    monkeypatch.setattr(base, "file_identity", lambda path: stats.append(path) or identity(path))
    monkeypatch.setattr(Path, "exists", lambda path: pytest.fail(f"{path} checked with a stat of its own"))
    mine = index_dataset("dfdc", tmp_path, shard=(2, 3)).items
    assert sorted(stats) == sorted(item.source for item in mine) and len(mine) < whole


def test_missing_files_and_second_names_keep_todays_shards(tmp_path: Path) -> None:
    """Where a check drops an item the listings cannot stand in for it: every shard then checks every file."""
    options = make_each(tmp_path)
    (tmp_path / "ffpp/manipulated_sequences/FaceSwap/c23/videos/003_000.mp4").unlink()
    (tmp_path / "dfdc/dfdc_train_part_1/p1c2.mp4").unlink()
    assert_shards_as_today("ffpp", tmp_path / "ffpp", options["ffpp"] | {"allow_missing": True})
    assert_shards_as_today("dfdc", tmp_path / "dfdc", {"allow_missing": True})
    with pytest.raises(DatasetLayoutError, match=r"p1c2\.mp4: listed in .* but missing on disk"):
        index_dataset("dfdc", tmp_path / "dfdc", shard=(1, 2))
    folder = tmp_path / "folder"
    (folder / "fake/again.mp4").hardlink_to(folder / "fake/a.mp4")  # one file under two names
    (folder / "real/link.mp4").symlink_to(folder / "real/a.mp4")
    assert any("the same file as" in reason for _, reason in index_dataset("folder", folder).skipped)
    assert_shards_as_today("folder", folder, options["folder"])
    dfdcp = tmp_path / "dfdcp"
    records = json.loads((dfdcp / "dataset.json").read_text())
    first = next(iter(records))
    twin = first.replace("clip0", "twin0")
    (dfdcp / twin).hardlink_to(dfdcp / first)
    (dfdcp / "dataset.json").write_text(json.dumps(records | {twin: records[first]}))
    assert_shards_as_today("dfdcp", dfdcp, options["dfdcp"])
