"""Evaluation engine: batched scoring, `recce evaluate` (dataset, cross-manipulation, robustness) and bad inputs.

A randomly initialised RECCE at 64 px scores tiny manifests of crops cut from real face photos; the numbers
mean nothing, so every reported metric is checked against scikit-learn on the scores written beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from media import face_patch
from sklearn.metrics import roc_auc_score

from recce import checkpoints
from recce.cli import main
from recce.data import manifest
from recce.data.perturb import SEED_TABLE5
from recce.data.video import read_image
from recce.detectors import Preprocess
from recce.detectors.recce import Recce
from recce.engine.inference import score_frames, score_images

SIZE = 64
CROP = 72  # crops are stored larger than the input size, so the resize path runs
FFPP_METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures")
FAST = ["--workers", "0", "--bootstrap", "20", "--no-progress", "--batch-size", "5"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _crop(photo: str, shift: int) -> np.ndarray:
    patch, _ = face_patch(photo, face_width=60)
    top = (patch.shape[0] - CROP) // 2 + shift
    left = (patch.shape[1] - CROP) // 2 - shift
    return np.ascontiguousarray(patch[top : top + CROP, left : left + CROP])


def _manipulated(image: np.ndarray, method: str, seed: int) -> np.ndarray:
    """Four distinct edits of the inner face, standing in for four manipulation methods."""
    out = image.copy()
    inner = (slice(18, 54), slice(18, 54))
    region = out[inner]
    if method in ("Deepfakes", "celeb-synthesis"):
        out[inner] = cv2.GaussianBlur(region, (7, 7), 2)
    elif method == "Face2Face":
        out[inner] = np.clip(region.astype(int) + (25, -10, -10), 0, 255).astype(np.uint8)
    elif method == "FaceSwap":
        out[inner] = _crop("grace_hopper", seed % 3)[inner]
    else:
        noise = np.random.default_rng(seed).normal(0, 12, region.shape)
        out[inner] = np.clip(region + noise, 0, 255).astype(np.uint8)
    return out


def _videos() -> list[tuple[str, str, str, int, str, str]]:
    """(dataset, split, video, label, method, photo) of each video; two frames per video."""
    videos = [("ffpp", "test", f"{i:03d}", 0, "youtube", "astronaut") for i in range(4)]
    videos += [("ffpp", "test", f"00{i}_01{i}", 1, m, "astronaut") for i, m in enumerate(FFPP_METHODS)]
    videos += [("ffpp", "val", "100", 0, "youtube", "astronaut")]
    videos += [("celebdf", "test", f"id{i}_000{i}", 0, "Celeb-real", "grace_hopper") for i in range(2)]
    videos += [("celebdf", "test", f"id{i}_id9_000{i}", 1, "Celeb-synthesis", "grace_hopper") for i in range(2)]
    return videos


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A manifest of 26 crops: FF++ test (4 real videos, one per method), an all-real val split, a Celeb-DF test."""
    root = tmp_path_factory.mktemp("crops")
    rows = []
    for v, (dataset, split, video, label, method, photo) in enumerate(_videos()):
        for frame in (0, 10):
            image = _crop(photo, shift=(v + frame) % 7 - 3)
            if label:
                image = _manipulated(image, method if dataset == "ffpp" else "celeb-synthesis", v + frame)
            path = f"crops/{dataset}/{method}/{video}/{frame:04d}.png"
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            rows.append(
                dict(path=path, dataset=dataset, split=split, video=video, frame=frame, label=label, method=method)
                | dict(compression="c23", x1=0, y1=0, x2=CROP, y2=CROP, score=1.0, detector="none")
            )
    manifest.write(manifest.to_frame(rows), root / "manifest.parquet")
    return root


@pytest.fixture(scope="module")
def checkpoint_pair(tmp_path_factory) -> tuple[Path, Path]:
    """Two random RECCE checkpoints at 64 px that score differently (the second has a flipped head)."""
    folder = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(1)
    model = Recce(preprocess=Preprocess(SIZE))
    first = checkpoints.save(model, folder / "a.safetensors")
    with torch.no_grad():
        model.fc.weight.neg_()
    second = checkpoints.save(model, folder / "b.safetensors")
    return first, second


def _auc(table: pd.DataFrame) -> float:
    return float(roc_auc_score(table["label"], table["score"]))


def test_batching_order_and_in_memory_scoring_agree(data, checkpoint_pair):
    model = checkpoints.load(checkpoint_pair[0])
    frame = manifest.select(manifest.read(data / "manifest.parquet"), datasets=["celebdf"])
    runs = [
        score_frames(model, frame, batch_size=batch, device="cpu", workers=0, progress=False) for batch in (1, 3, 8)
    ]
    for scored in runs:
        assert scored["path"].tolist() == frame["path"].tolist()
        np.testing.assert_allclose(scored["score"], runs[-1]["score"], rtol=1e-5, atol=1e-6)
    assert runs[-1]["score"].between(0, 1).all() and runs[-1]["score"].nunique() > 1

    images = [read_image(p) for p in frame["abspath"]]
    scores, maps = score_images(model, images, batch_size=3, device="cpu", maps=True)
    np.testing.assert_allclose(scores, runs[-1]["score"], rtol=1e-5, atol=1e-6)
    assert len(maps) == len(images)
    assert maps[0]["reconstruction"].shape == (SIZE, SIZE, 3) and maps[0]["reconstruction"].dtype == np.uint8
    assert maps[0]["difference"].shape == (SIZE, SIZE) and maps[0]["difference"].min() >= 0
    assert maps[0]["attention"].ndim == 2 and 0 <= maps[0]["attention"].min() <= maps[0]["attention"].max() <= 1
    assert score_images(model, np.stack(images[:2]), device="cpu")[1] is None


def test_dataset_protocol_writes_consistent_files(data, checkpoint_pair, tmp_path):
    out = tmp_path / "eval"
    args = ["evaluate", "--checkpoint", str(checkpoint_pair[0]), "--manifest", str(data / "manifest.parquet")]
    assert main([*args, "--out", str(out), "--aggregate", "max", "--label", "FF++", *FAST]) == 0

    scores = pd.read_csv(out / "scores.csv", keep_default_na=False)
    pd.testing.assert_frame_equal(
        pd.read_parquet(out / "scores.parquet")[["path", "score"]], scores[["path", "score"]], check_dtype=False
    )
    assert len(scores) == 24 and set(scores["split"]) == {"test"}
    report = json.loads((out / "metrics.json").read_text())
    assert list(report["datasets"]) == ["celebdf", "ffpp"] and report["input_size"] == SIZE
    for dataset, rows in scores.groupby("dataset"):
        result = report["datasets"][dataset]
        assert result["frame"]["auc"] == pytest.approx(_auc(rows), abs=1e-12)
        assert result["frame"]["n"] == len(rows)
        low, high = result["frame"]["auc_ci"]
        assert 0 <= low <= high <= 1
        videos = rows.groupby(["method", "video"]).agg(label=("label", "first"), score=("score", "max"))
        assert result["video"]["n"] == len(videos) and result["video"]["auc"] == pytest.approx(_auc(videos))
    ffpp = scores[scores["dataset"] == "ffpp"]
    for method in FFPP_METHODS:
        subset = ffpp[(ffpp["label"] == 0) | (ffpp["method"] == method)]
        assert report["datasets"]["ffpp"]["per_method"][method]["frame"]["auc"] == pytest.approx(_auc(subset))

    markdown = (out / "metrics.md").read_text()
    ffpp_auc = f"{100 * report['datasets']['ffpp']['frame']['auc']:.2f}"
    assert "# Evaluation: FF++" in markdown and f"| ffpp | {ffpp_auc} |" in markdown
    assert "| FF++ |" in markdown  # the Table 3 style summary row, named by --label
    roc = cv2.imread(str(out / "roc.png"))
    assert roc is not None and roc.shape[0] > 100


def test_cross_manipulation_table(data, checkpoint_pair, tmp_path):
    first, second = map(str, checkpoint_pair)
    out = tmp_path / "cross"
    pairs = [f"DF={first}", f"F2F={second}", f"FaceSwap={first}", f"nt={second}"]
    args = ["evaluate", "--protocol", "cross-manipulation", "--manifest", str(data / "manifest.parquet")]
    assert main([*args, "--datasets", "ffpp", "--checkpoints", *pairs, "--out", str(out), *FAST]) == 0

    table = pd.read_csv(out / "cross_manipulation.csv", index_col="train")
    keys = ["DF", "F2F", "FaceSwap", "nt"]
    assert list(table.index) == keys and list(table.columns) == [*keys, "Cross Avg."]
    scores = pd.read_parquet(out / "cross_manipulation_scores.parquet")
    assert len(scores) == 4 * 16  # each checkpoint scored the FF++ test split once
    methods = dict(zip(keys, FFPP_METHODS, strict=True))
    for train in keys:
        own = scores[scores["train"] == train]
        for test, method in methods.items():
            subset = own[(own["label"] == 0) | (own["method"] == method)]
            assert table.loc[train, test] == pytest.approx(_auc(subset))
        off_diagonal = [table.loc[train, test] for test in keys if test != train]
        assert table.loc[train, "Cross Avg."] == pytest.approx(np.mean(off_diagonal))
    pd.testing.assert_series_equal(table.loc["DF", keys], table.loc["FaceSwap", keys], check_names=False)
    assert not np.allclose(table.loc["DF", keys], table.loc["F2F", keys])

    report = json.loads((out / "cross_manipulation.json").read_text())
    assert report["methods"] == methods
    assert report["auc"]["F2F"]["Cross Avg."] == pytest.approx(table.loc["F2F", "Cross Avg."])
    markdown = (out / "cross_manipulation.md").read_text()
    assert "| Methods | Train | DF | F2F | FaceSwap | nt | Cross Avg. |" in markdown
    assert cv2.imread(str(out / "cross_manipulation.png")) is not None


def _robustness(data: Path, checkpoint: Path, out: Path, kinds: list[str]) -> int:
    args = ["evaluate", "--protocol", "robustness", "--checkpoint", str(checkpoint)]
    args += ["--manifest", str(data / "manifest.parquet"), "--datasets", "celebdf", "--out", str(out)]
    return main([*args, "--perturbations", *kinds, "--levels", "1", "4", *FAST])


def test_robustness_table_and_deterministic_perturbations(data, checkpoint_pair, tmp_path):
    kinds = [*SEED_TABLE5, "noise"]
    assert _robustness(data, checkpoint_pair[0], tmp_path / "a", kinds) == 0

    scores = pd.read_parquet(tmp_path / "a" / "robustness_scores.parquet")
    report = json.loads((tmp_path / "a" / "robustness.json").read_text())
    clean = scores[scores["perturbation"] == "none"]
    assert report["clean"]["frame"]["auc"] == pytest.approx(_auc(clean))
    for kind in kinds:
        for level in (1, 4):
            run = scores[(scores["perturbation"] == kind) & (scores["level"] == level)]
            assert len(run) == len(clean) == 8
            assert report["frame_auc"][f"Level {level}"][kind] == pytest.approx(_auc(run))
            assert not np.allclose(run["score"], clean["score"], rtol=0, atol=1e-7), f"{kind} {level} changed nothing"
        average = np.mean([report["frame_auc"][f"Level {level}"][kind] for level in (1, 4)])
        assert report["frame_auc"]["Avg."][kind] == pytest.approx(average)
    assert report["frame_auc"]["Avg."]["Avg."] == pytest.approx(
        np.mean([report["frame_auc"]["Avg."][k] for k in kinds])
    )

    markdown = (tmp_path / "a" / "robustness.md").read_text()
    assert f"| Level | {' | '.join(kinds)} | Avg. |" in markdown
    assert all(f"| {row} |" in markdown for row in ("Level 1", "Level 4", "Avg."))
    assert "Clean: frame AUC" in markdown
    assert cv2.imread(str(tmp_path / "a" / "robustness.png")) is not None

    assert _robustness(data, checkpoint_pair[0], tmp_path / "b", ["noise"]) == 0
    again = pd.read_parquet(tmp_path / "b" / "robustness_scores.parquet")
    noise = scores[scores["perturbation"].isin(["none", "noise"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(again, noise)


def _error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing checkpoint", "nope.safetensors: checkpoint not found"),
        ("missing manifest", "missing.parquet: manifest not found"),
        ("empty selection", "no rows match (split=test, datasets=dfdc)"),
        ("one class", "split 'val' of dataset 'ffpp' holds only real crops"),
        ("bad pair", "--checkpoints expects METHOD=PATH items, got 'DF'"),
        ("unknown method", "method 'XX' has no fakes in the selection"),
        ("unknown perturbation", "unknown perturbation type 'fog'"),
    ],
)
def test_bad_inputs_give_one_line_and_exit_2(case, message, data, checkpoint_pair, tmp_path, capsys):
    checkpoint, manifest_path = str(checkpoint_pair[0]), str(data / "manifest.parquet")
    base = ["evaluate", "--out", str(tmp_path / "out"), *FAST]
    argv = {
        "missing checkpoint": [*base, "--checkpoint", str(tmp_path / "nope.safetensors"), "--manifest", manifest_path],
        "missing manifest": [*base, "--checkpoint", checkpoint, "--manifest", str(tmp_path / "missing.parquet")],
        "empty selection": [*base, "--checkpoint", checkpoint, "--manifest", manifest_path, "--datasets", "dfdc"],
        "one class": [*base, "--checkpoint", checkpoint, "--manifest", manifest_path, "--split", "val"],
        "bad pair": [*base, "--protocol", "cross-manipulation", "--manifest", manifest_path, "--checkpoints", "DF"],
        "unknown method": [
            *[*base, "--protocol", "cross-manipulation", "--manifest", manifest_path, "--datasets", "ffpp"],
            *["--checkpoints", f"DF={checkpoint}", f"XX={checkpoint}"],
        ],
        "unknown perturbation": [
            *[*base, "--protocol", "robustness", "--checkpoint", checkpoint, "--manifest", manifest_path],
            *["--perturbations", "fog"],
        ],
    }[case]
    assert main(argv) == 2
    line = _error_line(capsys)
    assert line.startswith("recce evaluate: ") and message in line
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_unreadable_crop_in_a_worker_is_one_line(data, checkpoint_pair, tmp_path, capsys):
    frame = manifest.read(data / "manifest.parquet").drop(columns="abspath")
    frame = frame[frame["dataset"] == "celebdf"].reset_index(drop=True)
    frame["path"] = [str(data / p) for p in frame["path"]]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    frame.loc[3, "path"] = str(broken)
    manifest.write(frame, tmp_path / "manifest.parquet")
    argv = ["evaluate", "--checkpoint", str(checkpoint_pair[0]), "--manifest", str(tmp_path / "manifest.parquet")]
    assert main([*argv, "--out", str(tmp_path / "out"), "--no-progress", "--workers", "1"]) == 2
    assert _error_line(capsys) == f"recce evaluate: {broken}: crop is missing or not a readable image"
