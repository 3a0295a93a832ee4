"""Map panels (seed Figure 1 for RECCE): a face as the detector sees it, and the maps it can show of it.

A panel row shows the crop at the detector's input size, then one column per map the detector declares: images
(RECCE's reconstruction x̂) as they are, heatmaps (RECCE's |x − x̂| and guided attention, RFM's forgery attention,
MultiAtt's attention maps) over the crop, each scaled to the range its values take in the figure so that a
low-contrast map stays readable (the colour bar gives the values). With perturbations, one row per perturbed copy of
the face shows whether the maps stay consistent under interference.
"""

from __future__ import annotations

import os
import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn

from recce.checkpoints import unwrap
from recce.data.dataset import ManifestDataset, row_seed
from recce.engine.evaluate import SeededPerturbation, atomic_path
from recce.engine.inference import FaceMaps, score_images

MAP_TITLES = {
    "reconstruction": "reconstruction x̂",
    "difference": "|x − x̂| (mean over RGB)",
    "attention": "attention",
}


class MaskRow(NamedTuple):
    """One face (or one perturbed copy of it) and what the detector made of it."""

    image: np.ndarray  # RGB uint8 crop, any size (resized to the detector's input size for display)
    maps: FaceMaps  # the detector's named maps of it (`score_images(..., maps=True)`)
    score: float  # P(fake)
    title: str


@dataclass(frozen=True)
class FaceItem:
    """A face crop to visualise; `key` seeds its perturbations (the manifest path, as in evaluation)."""

    key: str
    image: np.ndarray
    title: str
    landmarks: np.ndarray | None = None  # five normalised points, for detectors with a face-mask input


@dataclass(frozen=True)
class Panel:
    """A written panel and the scores shown in it (clean first, then one per perturbation)."""

    path: Path
    title: str
    scores: dict[str, float]


def _ranges(rows: Sequence[MaskRow], names: Sequence[str]) -> dict[str, tuple[float, float]]:
    """Each heatmap's value range over the figure's rows (shared, so rows compare)."""
    ranges = {}
    for name in names:
        values = [row.maps[name] for row in rows if row.maps[name].ndim == 2]
        if values:
            low, high = min(float(v.min()) for v in values), max(float(v.max()) for v in values)
            ranges[name] = (low, high if high > low else low + 1e-6)
    return ranges


def mask_grid(rows: Sequence[MaskRow], size: int | None = None) -> np.ndarray:
    """A figure with one row per MaskRow (the input, then each map), as RGB uint8; crops shown at `size`."""
    if not rows:
        raise ValueError("mask_grid needs at least one row")
    names = list(rows[0].maps)
    ranges = _ranges(rows, names)
    side = size or rows[0].image.shape[0]
    figure = Figure(figsize=(3.6 * (1 + len(names)), 3.3 * len(rows)), dpi=100)
    FigureCanvasAgg(figure)
    # a fixed layout (not "constrained"): every panel of a figure keeps its place whatever the colour-bar labels
    spacing = {"left": 0.02, "right": 0.96, "bottom": 0.02, "top": 1 - 0.45 / len(rows), "wspace": 0.35, "hspace": 0.4}
    axes = figure.subplots(len(rows), 1 + len(names), squeeze=False, gridspec_kw=spacing)
    for row, cells in zip(rows, axes, strict=True):
        image = row.image
        if image.shape[:2] != (side, side):
            image = cv2.resize(image, (side, side), interpolation=cv2.INTER_LINEAR)
        cells[0].imshow(image)
        cells[0].set_title(f"{textwrap.fill(row.title, 40)}\nP(fake) = {row.score:.3f}", fontsize=10)
        for cell, name in zip(cells[1:], names, strict=True):
            value = row.maps[name]
            if value.ndim == 3:
                cell.imshow(value)
            else:
                heat = cv2.resize(value.astype(np.float32), (side, side), interpolation=cv2.INTER_LINEAR)
                cell.imshow(image)
                low, high = ranges[name]
                shown = cell.imshow(heat, cmap="jet", alpha=0.5, vmin=low, vmax=high)
                figure.colorbar(shown, ax=cell, fraction=0.046, pad=0.02)
            cell.set_title(MAP_TITLES.get(name, name), fontsize=10)
        for cell in cells:
            cell.set_axis_off()
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[:, :, :3].copy()


def mask_panel(image_rgb: np.ndarray, maps: Mapping[str, np.ndarray], score: float, title: str) -> np.ndarray:
    """One face's panel as an RGB uint8 image (for `recce detect --save-masks` and the web app too)."""
    return mask_grid([MaskRow(image_rgb, dict(maps), score, title)])


def manifest_items(frame: pd.DataFrame, limit: int) -> list[FaceItem]:
    """Up to `limit` crops of a manifest selection, one per video, alternating real and fake so both are shown."""
    videos = frame.drop_duplicates(["dataset", "method", "video"])
    by_label = [rows.reset_index(drop=True) for _, rows in videos.groupby("label", sort=True)]
    chosen = pd.concat(by_label).sort_index(kind="stable").head(limit)
    crops = ManifestDataset(chosen)  # reads files and packed crops alike
    items = []
    for index, row in enumerate(chosen.itertuples()):
        kind = "fake" if row.label == 1 else "real"
        title = f"{row.dataset}/{row.video} frame {row.frame} ({kind}, {row.method})"
        items.append(FaceItem(row.path, crops.load_image(index), title, getattr(row, "landmarks", None)))
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
    detector = unwrap(model)
    out = Path(out)
    panels = []
    for index, item in enumerate(items):
        variants = _variants(item, perturbations, level)
        landmarks = None if item.landmarks is None else [item.landmarks] * len(variants)
        scores, maps = score_images(
            model, [image for _, image in variants], size=size, device=device, amp=amp, maps=True, landmarks=landmarks
        )
        rows = [
            MaskRow(image, m, float(score), f"{item.title} · {name}" if perturbations else item.title)
            for (name, image), m, score in zip(variants, maps, scores, strict=True)
        ]
        path = out / _file_name(index, item.key)
        _write_png(path, mask_grid(rows, detector.preprocess.at_size(size).input_size))
        panels.append(Panel(path, item.title, {name: float(s) for (name, _), s in zip(variants, scores, strict=True)}))
    _write_index(out / "index.md", panels, perturbations, level, detector.name)
    return panels


def _write_index(path: Path, panels: Sequence[Panel], perturbations: Sequence[str], level: int, name: str) -> None:
    names = list(panels[0].scores) if panels else ["clean"]
    lines = [f"# {name} maps\n"]
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
