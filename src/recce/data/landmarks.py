"""Face landmarks for a manifest made without them: the face detector run on the stored crops themselves.

Manifests extracted before landmarks were stored, or with `--detector none` (WildDeepfake's shipped crops), have
none, and a face-mask detector (Add-Net) cannot train on them. Each crop gets the five points of its largest
face, in the crop's normalised coordinates, with their source recorded per row (`landmarks_source`): "detected"
(the face detector's own), "box" (Haar: placed in its box), or "crop" when no face was found (placed in the
central box the crop is assumed to be cut around). The manifest is rewritten atomically every `save_every` crops,
so a killed run keeps what it finished and a re-run fills in only the rows still missing.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from recce.data import manifest
from recce.data.dataset import ManifestDataset
from recce.data.faces import FaceDetector, choose_face
from recce.data.faces.mask import LANDMARKS_ASSUMED, box_landmarks, face_landmarks
from recce.data.video import MediaError

logger = logging.getLogger("recce")


@dataclass
class LandmarksSummary:
    manifest: Path
    rows: int
    todo: int = 0  # rows without landmarks before this run (all with `redo`)
    sources: dict[str, int] = field(default_factory=dict)  # landmarks_source -> rows filled by this run
    failures: list[tuple[str, str]] = field(default_factory=list)  # (crop path, reason): left without landmarks


def assumed_landmarks(scale: float) -> np.ndarray:
    """Normalised points of a face whose box is the crop's centre, 1/scale of its side (extraction's layout)."""
    if scale < 1:
        raise ValueError(f"crop scale must be at least 1, got {scale}")
    low, high = (1 - 1 / scale) / 2, (1 + 1 / scale) / 2
    return box_landmarks((low, low, high, high))


def crop_face_landmarks(image: np.ndarray, faces: list, scale: float) -> tuple[np.ndarray, str]:
    """The normalised five points of the crop's largest face, or the assumed layout when none was found."""
    face = choose_face(faces, "largest")
    if face is None:
        return assumed_landmarks(scale), LANDMARKS_ASSUMED
    points, source = face_landmarks(face)
    return points / np.array([image.shape[1], image.shape[0]], dtype=np.float32), source


def add_landmarks(
    path: str | os.PathLike,
    detector: FaceDetector,
    *,
    out: str | os.PathLike | None = None,
    scale: float = 1.3,
    redo: bool = False,
    batch_size: int = 16,
    save_every: int = 2000,
    progress: bool = True,
) -> LandmarksSummary:
    """Fill the `landmarks` column of the manifest at `path` (written to `out`, default in place)."""
    if batch_size < 1 or save_every < 1:
        raise ValueError("batch size and save interval must be at least 1")
    assumed_landmarks(scale)  # checks the scale before any work
    frame = manifest.read(path)
    target = Path(out) if out is not None else Path(path)
    if target.resolve().parent != Path(path).resolve().parent:
        raise manifest.ManifestError(f"{target}: write it beside {path} (crop paths are relative to its folder)")
    if manifest.LANDMARKS not in frame.columns:
        frame[manifest.LANDMARKS] = None
    if manifest.LANDMARKS_SOURCE not in frame.columns:
        frame[manifest.LANDMARKS_SOURCE] = ""
    landmarks = list(frame[manifest.LANDMARKS])
    sources = frame[manifest.LANDMARKS_SOURCE].astype(object).tolist()
    todo = [i for i, value in enumerate(landmarks) if redo or value is None]
    crops = ManifestDataset(frame)  # reads files and packed crops alike
    summary = LandmarksSummary(manifest=target, rows=len(frame), todo=len(todo))

    def save() -> None:
        frame[manifest.LANDMARKS] = pd.Series(landmarks, index=frame.index, dtype=object)
        frame[manifest.LANDMARKS_SOURCE] = sources
        manifest.write(frame.drop(columns="abspath"), target)

    done_since_save = 0
    for start in tqdm(range(0, len(todo), batch_size), desc="landmarks", unit="batch", disable=not progress):
        rows, images = [], []
        for row in todo[start : start + batch_size]:
            try:
                image = crops.load_image(row)
            except MediaError as error:
                summary.failures.append((frame["abspath"].iat[row], str(error)))
                logger.warning("%s", error)
                landmarks[row], sources[row] = None, ""
                continue
            rows.append(row)
            images.append(image)
        for row, image, faces in zip(rows, images, detector.detect(images) if images else [], strict=True):
            points, source = crop_face_landmarks(image, faces, scale)
            landmarks[row], sources[row] = points.reshape(10), source
            summary.sources[source] = summary.sources.get(source, 0) + 1
        done_since_save += len(rows)
        if done_since_save >= save_every:
            save()
            done_since_save = 0
    save()
    return summary
