"""The web app's one link to the scoring pipeline: load checkpoints, score an upload, draw its face panels.

Everything the app knows about `recce.detect` and the per-face maps passes through here, so a change to the
pipeline (detector registry, generic named maps) is adapted in this module alone.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from recce import checkpoints
from recce.data.faces import FaceDetector, build_detector
from recce.data.faces.base import Face
from recce.data.video import MediaError, probe, read_frames, read_image, sample_indices
from recce.detect import DetectSettings, FileResult, MediaScorer, media_kind
from recce.engine.inference import preprocess_of
from recce.serve.panels import face_panel, write_png

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass(frozen=True)
class LoadedModel:
    """A checkpoint ready to score, and what the page shows about it."""

    name: str
    checkpoint: Path
    detector: str
    input_size: int
    model: nn.Module = field(repr=False)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "detector": self.detector,
            "checkpoint": self.checkpoint.name,
            "input_size": self.input_size,
        }


@dataclass(frozen=True)
class FacePanel:
    face: int  # index into the result's faces
    frame: int
    score: float
    file: Path


@dataclass
class Scored:
    """One upload's result: the `recce detect` record plus what the page draws (timeline, panels)."""

    result: FileResult
    fps: float = 0.0
    sampled: list[int] = field(default_factory=list)  # frame indices read, in order
    panels: list[FacePanel] = field(default_factory=list)  # the most suspicious faces first


def load_models(paths: Sequence[str | Path]) -> dict[str, LoadedModel]:
    """Checkpoints by a unique short name (the file stem, numbered when two stems clash)."""
    models: dict[str, LoadedModel] = {}
    for path in map(Path, paths):
        model = checkpoints.load(path).eval()
        name, number = path.stem, 2
        while name in models:
            name, number = f"{path.stem}-{number}", number + 1
        models[name] = LoadedModel(name, path, model.name, preprocess_of(model).input_size, model)
    return models


class _CountingFaces:
    """Passes frames to the face detector unchanged and reports how many have gone through (video progress)."""

    def __init__(self, inner: FaceDetector, report: Callable[[int], None]) -> None:
        self.inner = inner
        self.name = inner.name
        self.report = report
        self.count = 0

    def detect(self, frames: Sequence[np.ndarray]) -> list[list[Face]]:
        found = self.inner.detect(frames)
        self.count += len(frames)
        self.report(self.count)
        return found


class Scorer:
    """Scores uploads with any loaded checkpoint; each worker thread gets its own face detector."""

    def __init__(
        self,
        models: dict[str, LoadedModel],
        settings: DetectSettings,
        face_detector: str = "auto",
        weights: str | None = None,
        min_face_score: float = 0.6,
        panels: int = 4,
    ) -> None:
        if panels < 0:
            raise ValueError(f"panels must be 0 or more, got {panels}")
        self.models = models
        self.settings = settings
        self.panels = panels
        self._face_options = (face_detector, weights, settings.device, min_face_score)
        self._local = threading.local()
        self.face_detector_name = self._faces().name  # builds one now, so a bad option fails at start

    def _faces(self) -> FaceDetector:
        if not hasattr(self._local, "faces"):
            name, weights, device, min_score = self._face_options
            self._local.faces = build_detector(name, weights, device, score_threshold=min_score)
        return self._local.faces

    def score(self, model_name: str, path: Path, display_name: str, panel_dir: Path, progress: Progress) -> Scored:
        """Score one uploaded file; file paths in the result and its messages become `display_name`."""
        loaded = self.models[model_name]
        info = _video_info(path)
        planned = sample_indices(info[0], "uniform", self.settings.frames) if info else [0]
        progress("reading frames", 0, len(planned))
        faces = _CountingFaces(self._faces(), lambda done: progress("reading frames", done, len(planned)))
        result, crops = MediaScorer(loaded.model, faces, self.settings).score_file(path, keep_crops=True)
        scored = Scored(_renamed(result, str(path), display_name), info[1] if info else 0.0)
        scored.sampled = planned[: result.frames]
        if crops:
            progress("drawing panels", 0, min(self.panels, len(crops)))
            scored.panels = self._draw_panels(path, result, crops, panel_dir, progress)
        return scored

    def _draw_panels(
        self, path: Path, result: FileResult, crops: list, panel_dir: Path, progress: Progress
    ) -> list[FacePanel]:
        order = sorted(range(len(result.faces)), key=lambda k: -result.faces[k].score)[: self.panels]
        wanted = sorted({result.faces[k].frame for k in order})
        frames = {0: read_image(path)} if result.kind == "image" else dict(read_frames(path, wanted))
        panels = []
        for done, k in enumerate(order, start=1):
            face = result.faces[k]
            crop, maps = crops[k]
            image = face_panel(frames[face.frame], face.box, crop, maps)
            file = panel_dir / f"face-{k}.png"
            write_png(file, image)
            panels.append(FacePanel(k, face.frame, face.score, file))
            progress("drawing panels", done, len(order))
        return panels


def _video_info(path: Path) -> tuple[int, float] | None:
    """(frame count, fps) of a readable video, else None (images; unreadable files fail in the pipeline)."""
    if media_kind(path) != "video":
        return None
    try:
        info = probe(path)
    except MediaError:
        return None
    return info.frames, info.fps


def _renamed(result: FileResult, path: str, name: str) -> FileResult:
    def rename(text: str | None) -> str | None:
        return None if text is None else text.replace(path, name)

    return dataclasses.replace(result, path=name, error=rename(result.error), warning=rename(result.warning))
