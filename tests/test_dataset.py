"""ManifestDataset: exact transform values, train-only flips, filters, perturbation seeds, class balance."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from recce.data import manifest
from recce.data.dataset import META_COLUMNS, ManifestDataset, row_seed
from recce.data.video import MediaError

# (dataset, split, video, label, method, compression) of each crop, two frames per video
VIDEOS = [
    ("ffpp", "train", "youtube/000", 0, "youtube", "c23"),
    ("ffpp", "train", "Deepfakes/000_003", 1, "Deepfakes", "c23"),
    ("ffpp", "train", "Face2Face/000_003", 1, "Face2Face", "c23"),
    ("ffpp", "test", "youtube/001", 0, "youtube", "c40"),
    ("ffpp", "test", "Deepfakes/001_002", 1, "Deepfakes", "c40"),
    ("celebdf", "test", "Celeb-real/id0_0000", 0, "Celeb-real", ""),
]


def crop_image(seed: int, height: int = 6, width: int = 6) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


@pytest.fixture
def manifest_path(tmp_path):
    rows = []
    for v, (dataset, split, video, label, method, compression) in enumerate(VIDEOS):
        for frame in (0, 5):
            path = f"crops/{dataset}/{video}/{frame:06d}.png"
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            image = crop_image(10 * v + frame)
            cv2.imwrite(str(tmp_path / path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            rows.append(
                dict(path=path, dataset=dataset, split=split, video=video, frame=frame, label=label)
                | dict(method=method, compression=compression, x1=0, y1=0, x2=6, y2=6, score=1.0, detector="none")
            )
    return manifest.write(manifest.to_frame(rows), tmp_path / "manifest.parquet")


def expected_tensor(rgb: np.ndarray) -> torch.Tensor:
    """(x / 255 - 0.5) / 0.5 in float64, channels first, then float32."""
    return torch.from_numpy(((rgb.astype(np.float64) / 255 - 0.5) / 0.5).transpose(2, 0, 1).astype(np.float32))


def test_known_crop_gives_the_exact_tensor(manifest_path):
    dataset = ManifestDataset(manifest_path, preprocess=6)
    image, label = dataset[1]
    assert image.dtype == torch.float32 and image.shape == (3, 6, 6)
    assert torch.equal(image, expected_tensor(crop_image(5)))  # RGB order, exact normalisation
    assert label == 0
    assert image.min() >= -1 and image.max() <= 1


def test_resize_is_bilinear_without_keeping_the_aspect(tmp_path):
    # a 2-column crop whose red goes 0 -> 100 left to right; 4x4 bilinear with half-pixel centres
    # samples x = -0.25, 0.25, 0.75, 1.25, i.e. red 0, 25, 75, 100
    rgb = np.zeros((3, 2, 3), np.uint8)
    rgb[:, 1, 0] = 100
    rgb[..., 1] = 40
    cv2.imwrite(str(tmp_path / "c.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    row = dict(path="c.png", dataset="d", split="test", video="v", frame=0, label=1, method="m")
    row |= dict(compression="", x1=0, y1=0, x2=2, y2=3, score=1.0, detector="none")
    path = manifest.write(manifest.to_frame([row]), tmp_path / "m.parquet")
    image, _ = ManifestDataset(path, preprocess=4)[0]
    expected = np.zeros((4, 4, 3), np.uint8)
    expected[..., 0] = [0, 25, 75, 100]
    expected[..., 1] = 40
    assert torch.equal(image, expected_tensor(expected))


def test_flips_only_in_training_and_reproducibly(manifest_path):
    plain = ManifestDataset(manifest_path, preprocess=6)[0][0]
    assert torch.equal(ManifestDataset(manifest_path, preprocess=6, train=True, flip_p=1.0)[0][0], plain.flip(-1))
    assert torch.equal(ManifestDataset(manifest_path, preprocess=6, train=False, flip_p=1.0)[0][0], plain)

    train = ManifestDataset(manifest_path, preprocess=6, train=True)

    def flips(seed: int) -> list[bool]:
        torch.manual_seed(seed)
        return [not torch.equal(train[0][0], plain) for _ in range(40)]

    assert flips(3) == flips(3)
    assert 5 < sum(flips(3)) < 35


def test_flips_reproducible_across_dataloader_workers(manifest_path):
    dataset = ManifestDataset(manifest_path, preprocess=6, train=True)

    def epoch() -> torch.Tensor:
        torch.manual_seed(7)
        return torch.cat([images for images, _ in DataLoader(dataset, batch_size=3, num_workers=2)])

    first, second = epoch(), epoch()
    assert torch.equal(first, second)
    unflipped = torch.stack([ManifestDataset(manifest_path, preprocess=6)[i][0] for i in range(len(dataset))])
    flipped = [not torch.equal(a, b) for a, b in zip(first, unflipped, strict=True)]
    assert any(flipped) and not all(flipped)


def test_perturbation_runs_before_resize_with_a_stable_seed(manifest_path):
    calls = []

    def darken(image: np.ndarray, seed: int) -> np.ndarray:
        calls.append((image.shape, seed))
        return image // 2

    dataset = ManifestDataset(manifest_path, preprocess=3, perturbation=darken)
    image, _ = dataset[2]
    path = dataset.frame["path"][2]
    assert calls == [((6, 6, 3), row_seed(path))]
    resized = cv2.resize(crop_image(10) // 2, (3, 3), interpolation=cv2.INTER_LINEAR)
    assert torch.equal(image, expected_tensor(resized))
    reordered = ManifestDataset(manifest.read(manifest_path).iloc[::-1], preprocess=3, perturbation=darken)
    reordered[reordered.frame["path"].tolist().index(path)]
    assert calls[-1] == calls[0]
    assert len({row_seed(p) for p in dataset.frame["path"]}) == len(dataset)
    assert all(0 <= row_seed(p) < 2**32 for p in dataset.frame["path"])


def test_filters_meta_and_labels(manifest_path):
    dataset = ManifestDataset(manifest_path, datasets=["ffpp"], splits=["train"], methods=["Deepfakes"], preprocess=6)
    assert sorted(set(dataset.frame["video"])) == ["Deepfakes/000_003", "youtube/000"]  # reals stay
    assert dataset.labels.tolist() == [0, 0, 1, 1]
    c40 = ManifestDataset(manifest_path, compressions=["c40"], return_meta=True, preprocess=6)
    image, label, meta = c40[0]
    assert meta["path"].endswith(meta["video"] + f"/{meta['frame']:06d}.png")
    assert meta | {"path": None} == {
        "path": None,
        "dataset": "ffpp",
        "split": "test",
        "video": c40.frame["video"][0],
        "frame": int(c40.frame["frame"][0]),
        "method": c40.frame["method"][0],
        "compression": "c40",
        "index": 0,
    }
    batch = next(iter(DataLoader(c40, batch_size=4)))
    assert batch[2]["compression"] == ["c40"] * 4 and batch[2]["index"].tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match=r"manifest\.parquet: no rows match \(datasets=\['dfdc'\]"):
        ManifestDataset(manifest_path, datasets=["dfdc"])


def test_unreadable_crop_names_the_file(manifest_path):
    dataset = ManifestDataset(manifest_path, preprocess=6)
    broken = dataset.frame["abspath"][3]
    with open(broken, "wb") as file:
        file.write(b"not a png")
    with pytest.raises(MediaError, match=f"{broken}: crop is missing or not a readable image"):
        dataset[3]


def test_compact_columns_give_back_the_manifest_rows(manifest_path, tmp_path):
    filters = dict(splits=["train", "test"], methods=["Deepfakes"])
    expected = manifest.select(manifest.read(manifest_path), **filters)
    expected = expected[[*ManifestDataset.COLUMNS, "abspath"]]
    from_file = ManifestDataset(manifest_path, return_meta=True, preprocess=6, **filters)
    from_frame = ManifestDataset(manifest.read(manifest_path), return_meta=True, preprocess=6, **filters)
    for dataset in (from_file, from_frame):
        pd.testing.assert_frame_equal(dataset.frame, expected)
        assert dataset.labels.tolist() == expected["label"].tolist()
        for index, row in enumerate(expected.itertuples()):
            _, label, meta = dataset[index]
            assert label == row.label and meta["path"] == row.abspath
            assert meta == {c: getattr(row, c) for c in META_COLUMNS} | {"path": row.abspath, "index": index}


def test_rows_from_manifests_in_different_folders_keep_their_own_paths(manifest_path, tmp_path):
    moved = tmp_path / "elsewhere" / "m.parquet"
    manifest.write(manifest.read(manifest_path).iloc[:3], moved)
    both = pd.concat([manifest.read(manifest_path).iloc[3:6], manifest.read(moved)], ignore_index=True)
    dataset = ManifestDataset(both, return_meta=True, preprocess=6)
    assert dataset.frame["abspath"].tolist() == both["abspath"].tolist()
    assert [dataset.path(i) for i in range(len(dataset))] == both["abspath"].tolist()
    relative = ManifestDataset(both.drop(columns="abspath"), preprocess=6)  # paths taken as they are
    assert relative.frame["abspath"].tolist() == both["path"].tolist()


def test_rows_cost_their_path_and_a_few_bytes(manifest_path):
    template = manifest.read(manifest_path)
    many = template.sample(n=5000, replace=True, random_state=0).reset_index(drop=True)
    many["frame"] = np.arange(len(many))
    many["path"] = many["path"].str.replace(".png", "", regex=False) + "_" + many["frame"].astype(str) + ".png"
    dataset = ManifestDataset(many.drop(columns="abspath"), preprocess=6)
    path_bytes = int(many["path"].str.len().sum())
    assert path_bytes < dataset.nbytes < path_bytes + 16 * len(many)  # offsets, codes, label, frame
