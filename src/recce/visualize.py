"""Difference masks (seed Figure 1): what RECCE reconstructs of a face, where it differs, and where it attends.

A panel row shows the crop as the model sees it (resized to the input size), the reconstruction x̂, the
reconstruction error |x - x̂| averaged over channels as a heatmap, and the reconstruction-guided attention map
(block8 grid, bilinearly upsampled) over the crop. With perturbations, one row per perturbed copy of the face
shows whether the masks stay consistent under interference. Rows of one figure share the heatmap scale.
"""

from __future__ import annotations

import os
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn

from recce.data.dataset import row_seed
from recce.data.video import read_image
from recce.engine.evaluate import SeededPerturbation, atomic_path
from recce.engine.inference import score_images

COLUMN_TITLES = ("input", "reconstruction x̂", "|x − x̂| (mean over RGB)", "attention")


class MaskRow(NamedTuple):
    """One face (or one perturbed copy of it) and what the model made of it."""

    image: np.ndarray  # RGB uint8 crop, any size (resized to the reconstruction's size for display)
    reconstruction: np.ndarray  # RGB uint8 at the model's input size
    attention: np.ndarray  # h x w float in [0, 1]
    score: float  # P(fake)
    title: str


@dataclass(frozen=True)
class FaceItem:
    """A face crop to visualise; `key` seeds its perturbations (the manifest path, as in evaluation)."""

    key: str
    image: np.ndarray
    title: str


@dataclass(frozen=True)
class Panel:
    """A written panel and the scores shown in it (clean first, then one per perturbation)."""

    path: Path
    title: str
    scores: dict[str, float]


def _difference(image: np.ndarray, reconstruction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(crop at the reconstruction's size, |x - x̂| mean over channels in [0, 1])."""
    height, width = reconstruction.shape[:2]
    if image.shape[:2] != (height, width):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    diff = np.abs(image.astype(np.float32) - reconstruction.astype(np.float32)).mean(axis=2) / 255.0
    return image, diff


def mask_grid(rows: Sequence[MaskRow]) -> np.ndarray:
    """A figure with one row per MaskRow (input, reconstruction, difference heatmap, attention), as RGB uint8."""
    if not rows:
        raise ValueError("mask_grid needs at least one row")
    shown = [_difference(row.image, row.reconstruction) for row in rows]
    diff_max = max(float(diff.max()) for _, diff in shown) or 1.0
    figure = Figure(figsize=(14, 3.3 * len(rows)), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(rows), 4, squeeze=False)
    for row, (image, diff), cells in zip(rows, shown, axes, strict=True):
        height, width = image.shape[:2]
        attention = cv2.resize(
            np.asarray(row.attention, dtype=np.float32), (width, height), interpolation=cv2.INTER_LINEAR
        )
        cells[0].imshow(image)
        cells[1].imshow(row.reconstruction)
        heat = cells[2].imshow(diff, cmap="inferno", vmin=0.0, vmax=diff_max)
        figure.colorbar(heat, ax=cells[2], fraction=0.046, pad=0.02)
        cells[3].imshow(image)
        gate = cells[3].imshow(attention, cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0)
        figure.colorbar(gate, ax=cells[3], fraction=0.046, pad=0.02)
        cells[0].set_title(f"{textwrap.fill(row.title, 40)}\nP(fake) = {row.score:.3f}", fontsize=10)
        for cell, name in zip(cells[1:], COLUMN_TITLES[1:], strict=True):
            cell.set_title(name, fontsize=10)
        for cell in cells:
            cell.set_axis_off()
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[:, :, :3].copy()


def mask_panel(
    image_rgb: np.ndarray, reconstruction: np.ndarray, attention: np.ndarray, score: float, title: str
) -> np.ndarray:
    """One face's panel as an RGB uint8 image (for `recce detect --save-masks` too)."""
    return mask_grid([MaskRow(image_rgb, reconstruction, attention, score, title)])


def manifest_items(frame: pd.DataFrame, limit: int) -> list[FaceItem]:
    """Up to `limit` crops of a manifest selection, one per video, alternating real and fake so both are shown."""
    videos = frame.drop_duplicates(["dataset", "method", "video"])
    by_label = [rows.reset_index(drop=True) for _, rows in videos.groupby("label", sort=True)]
    chosen = pd.concat(by_label).sort_index(kind="stable").head(limit)
    items = []
    for row in chosen.itertuples():
        kind = "fake" if row.label == 1 else "real"
        title = f"{row.dataset}/{row.video} frame {row.frame} ({kind}, {row.method})"
        items.append(FaceItem(row.path, read_image(row.abspath), title))
    return items


def _file_name(index: int, key: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(key).with_suffix("").as_posix()).strip("_")[-80:]
    return f"{index:03d}_{stem or 'face'}.png"


def _write_png(path: Path, rgb: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise OSError(f"{path}: could not write the PNG")


def _variants(item: FaceItem, perturbations: Sequence[str], level: int) -> list[tuple[str, np.ndarray]]:
    variants = [("clean", item.image)]
    for kind in perturbations:
        perturber = SeededPerturbation(kind, level)
        variants.append((f"{perturber.kind} level {level}", perturber(item.image, row_seed(item.key))))
    return variants


def write_panels(
    model: nn.Module,
    items: Sequence[FaceItem],
    out: str | os.PathLike,
    *,
    perturbations: Sequence[str] = (),
    level: int = 3,
    size: int | None = None,
    device: str = "auto",
    amp: str = "auto",
) -> list[Panel]:
    """One PNG per face (one row per perturbation when given) and an index.md listing them."""
    if getattr(model, "architecture", None) != "recce":
        raise ValueError("difference masks need a RECCE checkpoint (this model has no reconstruction or attention)")
    out = Path(out)
    panels = []
    for index, item in enumerate(items):
        variants = _variants(item, perturbations, level)
        scores, maps = score_images(
            model, [image for _, image in variants], size=size, device=device, amp=amp, maps=True
        )
        rows = [
            MaskRow(
                image,
                m.reconstruction,
                m.attention,
                float(score),
                f"{item.title} · {name}" if perturbations else item.title,
            )
            for (name, image), m, score in zip(variants, maps, scores, strict=True)
        ]
        path = out / _file_name(index, item.key)
        _write_png(path, mask_grid(rows))
        panels.append(Panel(path, item.title, {name: float(s) for (name, _), s in zip(variants, scores, strict=True)}))
    _write_index(out / "index.md", panels, perturbations, level)
    return panels


def _write_index(path: Path, panels: Sequence[Panel], perturbations: Sequence[str], level: int) -> None:
    names = list(panels[0].scores) if panels else ["clean"]
    lines = ["# RECCE difference masks\n"]
    if perturbations:
        lines.append(f"Each panel: one row per perturbation at level {level} (the first row is clean).\n")
    lines.append("| # | face | " + " | ".join(f"P(fake) {n}" for n in names) + " | panel |")
    lines.append("|" + "---|" * (len(names) + 3))
    for number, panel in enumerate(panels):
        cells = " | ".join(f"{panel.scores[n]:.3f}" for n in names)
        lines.append(f"| {number} | {panel.title} | {cells} | [{panel.path.name}]({panel.path.name}) |")
    lines.append("")
    lines += [f"## {panel.title}\n\n![{panel.title}]({panel.path.name})\n" for panel in panels]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines), encoding="utf-8")
