"""Difference-mask panels: `mask_panel` / `mask_grid` and `recce visualize` (files, manifest, perturbations)."""

from __future__ import annotations

import re

import cv2
import numpy as np
import pytest
import torch
from media import face_patch

from recce import checkpoints
from recce.cli import main
from recce.data import manifest
from recce.data.dataset import row_seed
from recce.detectors import Preprocess
from recce.detectors.recce import Recce
from recce.detectors.xception import Xception
from recce.engine.evaluate import SeededPerturbation
from recce.engine.inference import score_images
from recce.visualize import MaskRow, mask_grid, mask_panel

SIZE = 64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(3)
    return checkpoints.save(Recce(preprocess=Preprocess(SIZE)), tmp_path_factory.mktemp("ckpt") / "recce.safetensors")


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    """Four 80 px face crops on disk (two real, two 'fake' with a blurred inner face) and their manifest."""
    root = tmp_path_factory.mktemp("crops")
    rows = []
    for i, (photo, label) in enumerate([("astronaut", 0), ("grace_hopper", 0), ("astronaut", 1), ("grace_hopper", 1)]):
        patch, _ = face_patch(photo, face_width=60)
        image = cv2.resize(patch, (80, 80), interpolation=cv2.INTER_AREA)
        if label:
            image[20:60, 20:60] = cv2.GaussianBlur(image[20:60, 20:60], (9, 9), 3)
        path = f"faces/{photo}_{i}.png"
        (root / path).parent.mkdir(exist_ok=True)
        cv2.imwrite(str(root / path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        rows.append(
            dict(path=path, dataset="wilddeepfake", split="test", video=f"v{i}", frame=0, label=label)
            | dict(method="fake" if label else "real", compression="", x1=0, y1=0, x2=80, y2=80)
            | dict(score=1.0, detector="none")
        )
    manifest.write(manifest.to_frame(rows), root / "manifest.parquet")
    return root


def _rgb(path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def _index_scores(index: str) -> dict[str, list[float]]:
    """Panel file name -> P(fake) values of its row in index.md."""
    table = {}
    for line in index.splitlines():
        match = re.match(r"\| \d+ \| .* \| \[(.+\.png)\]\(.+\) \|$", line)
        if match:
            cells = line.split(" | ")[2:-1]
            table[match.group(1)] = [float(c) for c in cells]
    return table


def test_mask_panel_shows_the_reconstruction_error():
    image = face_patch("astronaut", face_width=40)[0][:64, :64]
    attention = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)

    def maps(reconstruction):
        difference = np.abs(image.astype(np.float32) - reconstruction).mean(axis=2) / 255
        return {"reconstruction": reconstruction, "difference": difference, "attention": attention}

    perfect = mask_panel(image, maps(image.copy()), 0.25, "perfect")
    inverted = mask_panel(image, maps(255 - image), 0.25, "perfect")
    assert perfect.dtype == np.uint8 and perfect.ndim == 3 and perfect.shape[2] == 3
    assert perfect.shape == inverted.shape
    changed = np.any(perfect != inverted, axis=2)
    columns = np.flatnonzero(changed.any(axis=0))
    width = perfect.shape[1]
    # the input and attention columns are identical; the reconstruction and heatmap columns differ
    assert columns.min() > width // 5 and columns.max() < 3 * width // 4
    grid = mask_grid([MaskRow(image, maps(image), 0.5, f"row {i}") for i in range(3)])
    assert grid.shape[1] == width and grid.shape[0] == pytest.approx(3 * perfect.shape[0], rel=0.02)


def test_visualize_writes_panels_with_the_model_scores(checkpoint, crops, tmp_path):
    out = tmp_path / "masks"
    argv = ["visualize", "--checkpoint", str(checkpoint), "--images", str(crops / "faces" / "astronaut_0.png")]
    argv += ["--manifest", str(crops / "manifest.parquet"), "--limit", "2", "--out", str(out), "--device", "cpu"]
    assert main(argv) == 0
    panels = sorted(out.glob("*.png"))
    assert len(panels) == 3
    index = (out / "index.md").read_text()
    assert "(real, real)" in index and "(fake, fake)" in index
    scores = _index_scores(index)
    assert sorted(scores) == [p.name for p in panels]
    model = checkpoints.load(checkpoint)
    sources = [
        crops / "faces" / "astronaut_0.png",
        crops / "faces" / "astronaut_0.png",
        crops / "faces" / "astronaut_2.png",
    ]
    expected, _ = score_images(model, [_rgb(p) for p in sources], device="cpu")
    for panel, score in zip(panels, expected, strict=True):
        assert scores[panel.name] == [pytest.approx(score, abs=6e-4)]
        image = _rgb(panel)
        assert image.shape[0] > 200 and image.shape[1] > 1000 and image.std() > 10


def test_visualize_perturb_draws_one_row_per_perturbation(checkpoint, crops, tmp_path):
    face = crops / "faces" / "grace_hopper_3.png"
    base = ["visualize", "--checkpoint", str(checkpoint), "--images", str(face), "--device", "cpu"]
    assert main([*base, "--out", str(tmp_path / "clean")]) == 0
    assert (
        main([*base, "--out", str(tmp_path / "rows"), "--perturb", "--perturbations", "blur", "noise", "--level", "2"])
        == 0
    )
    single = _rgb(next((tmp_path / "clean").glob("*.png")))
    grid = _rgb(next((tmp_path / "rows").glob("*.png")))
    assert grid.shape[0] == pytest.approx(3 * single.shape[0], rel=0.02)

    index = (tmp_path / "rows" / "index.md").read_text()
    assert "| P(fake) clean | P(fake) blur level 2 | P(fake) noise level 2 |" in index
    (scores,) = _index_scores(index).values()
    image = _rgb(face)
    variants = [image] + [SeededPerturbation(kind, 2)(image, row_seed(str(face))) for kind in ("blur", "noise")]
    expected, _ = score_images(checkpoints.load(checkpoint), variants, device="cpu")
    assert scores == [pytest.approx(s, abs=6e-4) for s in expected]


def test_visualize_bad_inputs_give_one_line_and_exit_2(checkpoint, crops, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"no image here")
    face = str(crops / "faces" / "astronaut_0.png")
    cases = [
        (["--checkpoint", str(checkpoint)], "give face crops with --images and/or --manifest"),
        (
            ["--checkpoint", str(tmp_path / "none.safetensors"), "--images", face],
            "none.safetensors: checkpoint not found",
        ),
        (["--checkpoint", str(checkpoint), "--images", str(broken)], "broken.png: not a readable image"),
    ]
    for args, message in cases:
        assert main(["visualize", *args, "--out", str(tmp_path / "out")]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("recce visualize: ") and message in lines[0], lines


def test_a_detector_without_maps_gets_input_only_panels(crops, tmp_path):
    xception = checkpoints.save(Xception(preprocess=Preprocess(SIZE)), tmp_path / "xception.safetensors")
    face = str(crops / "faces" / "astronaut_0.png")
    out = tmp_path / "out"
    assert main(["visualize", "--checkpoint", str(xception), "--images", face, "--out", str(out)]) == 0
    assert len(list(out.glob("*.png"))) == 1 and "# xception maps" in (out / "index.md").read_text()
