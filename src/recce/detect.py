"""Score people's own images and videos: sample frames, find faces, crop them as in training, run a detector.

Per face: P(fake) of the 1.3x conservative crop. Per frame: the highest face score (the most suspicious face).
Per file: the aggregate (mean by default) of its frame scores over the sampled frames that have a face.
A file that cannot be read is reported with its reason and the run goes on.
"""

from __future__ import annotations

import csv
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO

import cv2
import numpy as np
from torch import nn
from tqdm import tqdm

from recce.data.faces import FaceDetector, choose_face, crop_face
from recce.data.faces.crop import crop_landmarks
from recce.data.faces.mask import face_landmarks
from recce.data.indexers.base import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, walk_files
from recce.data.video import MAX_PIXELS, MediaError, last_line, probe, read_frames, read_image, sample_indices
from recce.engine.graphs import RUNTIMES, cpu_graph
from recce.engine.inference import preprocess_of, score_images
from recce.engine.runtime import resolve_device

CSV_META = ("detector", "checkpoint", "threshold", "recce_version", "created")
AGGREGATIONS = {"mean": np.mean, "median": np.median, "max": np.max}


@dataclass
class FaceResult:
    frame: int
    box: tuple[float, float, float, float]
    detector_score: float
    score: float  # P(fake)


@dataclass
class FileResult:
    path: str
    kind: str  # image | video | unknown
    frames: int = 0  # frames sampled
    frames_with_face: int = 0
    score: float | None = None  # aggregated P(fake); None when no face was found
    faces: list[FaceResult] = field(default_factory=list)
    error: str | None = None
    warning: str | None = None  # e.g. a video that stopped decoding part-way: the frames read were scored

    def verdict(self, threshold: float) -> str:
        if self.error:
            return "error"
        if self.score is None:
            return "no face"
        return "FAKE" if self.score >= threshold else "real"

    def frame_scores(self) -> dict[int, float]:
        """The highest face score of each frame."""
        best: dict[int, float] = {}
        for face in self.faces:
            best[face.frame] = max(best.get(face.frame, 0.0), face.score)
        return best

    def to_dict(self, threshold: float) -> dict:
        """The `recce detect --json` record of this file (the web app serves the same schema)."""
        data = asdict(self)
        data["verdict"] = self.verdict(threshold)
        data["frame_scores"] = {str(k): v for k, v in sorted(self.frame_scores().items())}
        return data


@dataclass(frozen=True)
class DetectSettings:
    frames: int = 32  # frames sampled evenly from each video
    aggregate: str = "mean"
    all_faces: bool = True  # score every face of a frame (False: only the most confident one)
    scale: float = 1.3
    batch_size: int = 32
    device: str = "auto"
    amp: str = "auto"
    max_pixels: int = MAX_PIXELS  # larger images and frames are refused before decoding
    runtime: str = "torch"  # torch (eager), or on the CPU a graph of P(fake): torchscript or onnxruntime

    def __post_init__(self):
        for name in ("frames", "batch_size", "max_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', ' ')} must be at least 1, got {getattr(self, name)}")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        if self.aggregate not in AGGREGATIONS:
            raise ValueError(f"aggregate must be one of {', '.join(AGGREGATIONS)}, got {self.aggregate!r}")


def write_csv(results: Iterable[FileResult], threshold: float, stream: TextIO, meta: dict | None = None) -> None:
    """One CSV row per file (`recce detect --csv`, the web app's CSV); `meta` adds what produced them."""
    extra = [key for key in CSV_META if meta and key in meta]
    writer = csv.writer(stream)
    writer.writerow(
        ["path", "kind", "frames", "frames_with_face", "faces", "score", "verdict", "error", "warning", *extra]
    )
    for r in results:
        row = [r.path, r.kind, r.frames, r.frames_with_face, len(r.faces), r.score, r.verdict(threshold)]
        writer.writerow([*row, r.error or "", r.warning or "", *(meta[key] for key in extra)])


def media_files(paths: Iterable[str | os.PathLike]) -> tuple[list[Path], list[Path]]:
    """(files to score, files skipped): the given files, and the image/video files inside given folders
    (recursively, sorted); the other files of those folders are skipped (and reported by the caller)."""
    files, skipped = [], []
    for path in map(Path, paths):
        if not path.is_dir():
            files.append(path)
            continue
        for child in walk_files(path):  # folder links not followed, a file reached twice given once
            (files if child.suffix.lower() in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS else skipped).append(child)
    return files, skipped


def media_kind(path: Path) -> str:
    """image, video or unknown, by extension."""
    suffix = path.suffix.lower()
    return "image" if suffix in IMAGE_EXTENSIONS else "video" if suffix in VIDEO_EXTENSIONS else "unknown"


def _frames(path: Path, kind: str, count: int, max_pixels: int) -> Iterator[tuple[int, np.ndarray]]:
    if not path.exists():
        raise MediaError(f"{path}: file not found")
    if kind == "image":
        return iter([(0, read_image(path, max_pixels))])
    if kind == "video":
        indices = sample_indices(probe(path, max_pixels).frames, "uniform", count=count)
        return read_frames(path, indices, max_pixels=max_pixels)
    raise MediaError(f"{path}: not an image or video (extension {path.suffix or 'none'})")


class MediaScorer:
    """A face detector and a forgery detector, ready to score files."""

    def __init__(self, model: nn.Module, faces: FaceDetector, settings: DetectSettings = DetectSettings()):
        self.model = model
        self.faces = faces
        self.settings = settings
        self.size = preprocess_of(model).load_size
        on_cpu = resolve_device(settings.device).type == "cpu"
        self.runtime = settings.runtime if on_cpu else "torch"  # the graphs are CPU runtimes
        self.graph = cpu_graph(model, self.runtime)

    def score_file(self, path: str | os.PathLike, keep_crops: bool = False) -> tuple[FileResult, list]:
        """Score one file; with `keep_crops`, also return (crop, maps) per face for mask panels."""
        return self._score_faces(self._find_faces(Path(path)), keep_crops)

    def _find_faces(self, path: Path) -> _FileFaces:
        """Decode the sampled frames and crop their faces: everything before the forgery detector."""
        result = FileResult(str(path), media_kind(path))
        faces = _FileFaces(result)
        try:
            frames = _until_error(_frames(path, result.kind, self.settings.frames, self.settings.max_pixels), result)
            for batch in _batched(frames, self.settings.batch_size):
                detections = self.faces.detect([frame for _, frame in batch])
                for (index, frame), found in zip(batch, detections, strict=True):
                    result.frames += 1
                    if not self.settings.all_faces:
                        best = choose_face(found)
                        found = [best] if best is not None else []
                    result.frames_with_face += bool(found)
                    for face in found:
                        faces.found.append((index, face))
                        faces.crops.append(crop_face(frame, face.box, self.settings.scale, self.size))
                        points = face_landmarks(face)[0]
                        faces.landmarks.append(crop_landmarks(points, face.box, frame.shape[:2], self.settings.scale))
        except MediaError as error:
            result.error = str(error)
        except Exception as error:  # any library's failure on a hostile file is that file's, never the run's
            result.error = f"{path}: {error.__class__.__name__} while reading ({last_line(error)})"
        if result.error is None and result.frames == 0:
            result.error, result.warning = result.warning or f"{path}: no frame could be decoded", None
        return faces

    def _score_faces(self, faces: _FileFaces, keep_crops: bool) -> tuple[FileResult, list]:
        result = faces.result
        if result.error or not faces.crops:
            return result, []
        scores, maps = score_images(
            self.model,
            faces.crops,
            batch_size=self.settings.batch_size,
            device=self.settings.device,
            amp=self.settings.amp,
            maps=keep_crops,
            landmarks=faces.landmarks,
            graph=self.graph,
        )
        result.faces = [
            FaceResult(index, tuple(float(v) for v in face.box), float(face.score), float(score))
            for (index, face), score in zip(faces.found, scores, strict=True)
        ]
        per_frame = list(result.frame_scores().values())
        result.score = float(AGGREGATIONS[self.settings.aggregate](per_frame))
        return result, list(zip(faces.crops, maps, strict=True)) if keep_crops else []

    def score_files(
        self,
        files: Iterable[str | os.PathLike],
        masks_dir: str | os.PathLike | None = None,
        progress: bool = True,
        prefetch: int = 1,
    ) -> list[FileResult]:
        """Score each file (see `media_files` for folders); a file that fails is a result with its error.

        With `prefetch` > 0, a background thread decodes and finds the faces of up to that many next files while
        the forgery detector scores the current one (the two overlap on a multi-core CPU); each file's
        computation, and so its scores, stay the same. 0 does everything in turn.
        """
        files = [Path(path) for path in files]
        results = []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="recce-faces") if prefetch else nullcontext() as pool:
            pending: deque = deque()
            for path in tqdm(files, desc="detect", unit="file", disable=not progress):
                if pool is None:
                    faces = self._find_faces(path)
                else:
                    while len(pending) <= prefetch and len(results) + len(pending) < len(files):
                        pending.append(pool.submit(self._find_faces, files[len(results) + len(pending)]))
                    faces = pending.popleft().result()
                result, crops = self._score_faces(faces, keep_crops=masks_dir is not None)
                if masks_dir is not None and crops:
                    _save_masks(Path(masks_dir), len(results), result, crops)
                results.append(result)
        return results


@dataclass
class _FileFaces:
    """A file's faces, found and cropped, waiting for the forgery detector."""

    result: FileResult
    found: list[tuple[int, object]] = field(default_factory=list)
    crops: list[np.ndarray] = field(default_factory=list)
    landmarks: list[np.ndarray] = field(default_factory=list)  # per crop, normalised: for face-mask detectors


def run_metadata(
    checkpoint: str | os.PathLike, model: nn.Module, face_detector: str, threshold: float, runtime: str = "torch"
) -> dict:
    """What produced a set of results: checkpoint (and its SHA-256), detector, runtime, threshold, versions, time."""
    import platform
    from datetime import datetime, timezone

    import torch

    from recce import __version__
    from recce.catalogue import file_sha256

    return {
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": file_sha256(checkpoint),
        "detector": getattr(model, "name", type(model).__name__),
        "input_size": preprocess_of(model).input_size,
        "face_detector": face_detector,
        "runtime": runtime,
        "threshold": threshold,
        "recce_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def checkpoint_warnings(provenance: dict) -> list[str]:
    """Why a checkpoint's scores on real media may mean little, read from its provenance."""
    warnings = []
    if "synthetic" in (provenance.get("trained_on") or []):
        warnings.append(
            "this checkpoint was trained on the synthetic benchmark (cartoon faces): its scores on real media mean "
            "nothing (`recce weights` lists published weights)"
        )
    if provenance.get("input_size_assumed"):
        warnings.append(
            "the input size these weights were trained at is unknown (converted without --input-size); the "
            "detector's native size is assumed"
        )
    return warnings


def _until_error(frames: Iterator[tuple[int, np.ndarray]], result: FileResult) -> Iterator[tuple[int, np.ndarray]]:
    """The frames up to a decoding error, which becomes the result's warning rather than losing the frames read."""
    try:
        yield from frames
    except MediaError as error:
        result.warning = str(error)


def _batched(items: Iterator, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _save_masks(folder: Path, number: int, result: FileResult, crops: list) -> None:
    from recce.visualize import mask_panel

    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{number:04d}_{Path(result.path).stem}"
    for k, (face, (crop, maps)) in enumerate(zip(result.faces, crops, strict=True)):
        title = f"{Path(result.path).name} frame {face.frame} face {k}"
        panel = mask_panel(crop, maps, face.score, title)
        target = folder / f"{stem}_f{face.frame:06d}_{k}.png"
        tmp = target.with_name(f".{target.name}.tmp.png")
        cv2.imwrite(str(tmp), cv2.cvtColor(panel, cv2.COLOR_RGB2BGR))
        os.replace(tmp, target)
