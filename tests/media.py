"""Test media built from real face photos: composited frames, H.264 videos (PyAV), frame folders, bad files.

Tests import it as `media` (pytest puts tests/ on sys.path); the benchmarks import it as `tests.media` after
putting the repository root on sys.path. So it holds no pytest code.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

import av
import cv2
import matplotlib.cbook
import numpy as np
import skimage.data

# (x1, y1, x2, y2) of the face in each photo, measured once by eye and with OpenCV's frontal Haar cascade
PHOTO_FACE_BOXES = {
    "astronaut": (177.0, 66.0, 272.0, 161.0),
    "grace_hopper": (155.0, 105.0, 377.0, 327.0),
}


def face_photo(name: str = "astronaut") -> np.ndarray:
    """A real face photo as RGB uint8: skimage's astronaut or matplotlib's grace_hopper.jpg."""
    if name == "astronaut":
        return skimage.data.astronaut()
    if name == "grace_hopper":
        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as file:
            data = np.frombuffer(file.read(), np.uint8)
        return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    raise ValueError(f"unknown photo {name!r}")


def face_patch(name: str = "astronaut", face_width: int = 80) -> tuple[np.ndarray, tuple[float, ...]]:
    """The photo's head with a margin of half a face around it, scaled so the face is `face_width` wide."""
    photo = face_photo(name)
    x1, y1, x2, y2 = PHOTO_FACE_BOXES[name]
    margin = 0.5 * (x2 - x1)
    left, top = int(max(0, x1 - margin)), int(max(0, y1 - margin))
    right, bottom = int(min(photo.shape[1], x2 + margin)), int(min(photo.shape[0], y2 + margin))
    scale = face_width / (x2 - x1)
    size = (round((right - left) * scale), round((bottom - top) * scale))
    patch = cv2.resize(photo[top:bottom, left:right], size, interpolation=cv2.INTER_AREA)
    box = ((x1 - left) * scale, (y1 - top) * scale, (x2 - left) * scale, (y2 - top) * scale)
    return patch, box


def background(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth colour gradient with mild noise: structure without anything face-like."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([60 + 120 * xs / width, 80 + 100 * ys / height, 140 - 60 * xs / width], axis=-1)
    noise = rng.normal(0.0, 6.0, size=(height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def composite(
    patch: np.ndarray, patch_box: tuple[float, ...], canvas: np.ndarray, at: tuple[int, int]
) -> tuple[np.ndarray, tuple[float, ...]]:
    """Paste `patch` with its top-left corner at `at` = (x, y); returns the frame and the face box in it."""
    frame = canvas.copy()
    x, y = at
    h, w = patch.shape[:2]
    frame[y : y + h, x : x + w] = patch[: frame.shape[0] - y, : frame.shape[1] - x]
    x1, y1, x2, y2 = patch_box
    return frame, (x1 + x, y1 + y, x2 + x, y2 + y)


def moving_face_frames(
    n_frames: int,
    size: tuple[int, int] = (320, 240),
    photo: str = "astronaut",
    face_width: int = 80,
    seed: int = 0,
    absent: Collection[int] = (),
) -> tuple[list[np.ndarray], list[tuple[float, ...] | None]]:
    """Frames (width x height) with one face sliding diagonally across a fixed background; and its boxes.

    Frames listed in `absent` show the background only (box None).
    """
    width, height = size
    patch, patch_box = face_patch(photo, face_width)
    canvas = background(height, width, seed)
    room_x, room_y = width - patch.shape[1], height - patch.shape[0]
    if room_x < 0 or room_y < 0:
        raise ValueError(f"a {patch.shape[1]}x{patch.shape[0]} face patch does not fit a {width}x{height} frame")
    frames, boxes = [], []
    for i in range(n_frames):
        t = i / max(1, n_frames - 1)
        frame, box = composite(patch, patch_box, canvas, (round(t * room_x), round(t * room_y * 0.7)))
        frames.append(canvas.copy() if i in absent else frame)
        boxes.append(None if i in absent else box)
    return frames, boxes


def write_video(
    path: str | os.PathLike,
    frames: list[np.ndarray],
    fps: int = 25,
    gop: int | None = None,
    faststart: bool = False,
    display_rotation: int = 0,
) -> Path:
    """Encode RGB frames as H.264 (libx264, yuv420p, with B-frames); `gop` sets the keyframe interval;
    `display_rotation` (counter-clockwise degrees) is stored in the display matrix, as phones record it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames[0].shape[:2]
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(os.fspath(path), mode="w", options=options) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if display_rotation:
            stream.set_display_rotation(display_rotation)
        stream.options = {"preset": "veryfast", "crf": "18", "bf": "2"}
        if gop is not None:
            stream.options |= {"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def write_face_video(
    path: str | os.PathLike, n_frames: int = 12, seed: int = 0, gop: int | None = None, **frame_options
) -> list[tuple[float, ...] | None]:
    """A video of a moving real face; returns the face box of every frame (None where it is absent)."""
    frames, boxes = moving_face_frames(n_frames, seed=seed, **frame_options)
    write_video(path, frames, gop=gop)
    return boxes


def write_frame_folder(folder: str | os.PathLike, frames: list[np.ndarray], names: list[str]) -> Path:
    """Write RGB frames as PNGs with the given file names."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for frame, name in zip(frames, names, strict=True):
        cv2.imwrite(os.fspath(folder / name), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    return folder


def write_text_as_video(path: str | os.PathLike) -> Path:
    """A text file with a video name."""
    path = Path(path)
    path.write_text("this is not a video, only text that was renamed to .mp4\n" * 20)
    return path


def write_empty(path: str | os.PathLike) -> Path:
    path = Path(path)
    path.write_bytes(b"")
    return path


def write_truncated_copy(source: str | os.PathLike, path: str | os.PathLike, keep: float = 0.5) -> Path:
    """The first `keep` fraction of a video's bytes, as a download cut short leaves it."""
    data = Path(source).read_bytes()
    path = Path(path)
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _toy_image(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Reals are smooth gradients; fakes carry a 2-pixel checkerboard, a trace a CNN learns in a few steps."""
    y, x = np.mgrid[0:size, 0:size]
    base = 90 + 60 * np.sin(x / rng.uniform(4, 9) + rng.uniform(0, 6)) + 40 * np.cos(y / rng.uniform(4, 9))
    image = np.repeat(base[..., None], 3, axis=2) + rng.normal(0, 4, (size, size, 3))
    if label:
        image += 35 * (((x // 2 + y // 2) % 2) * 2 - 1)[..., None]
    return np.clip(image, 0, 255).astype(np.uint8)


def write_tiny_manifest(root: Path, size: int) -> Path:
    """A toy train/val/test manifest of size x size crops (4 frames per video, alternating labels); each crop has
    face landmarks (a canonical layout) for detectors whose input has a face mask."""
    from recce.data import manifest
    from recce.data.landmarks import assumed_landmarks

    landmarks = assumed_landmarks(1.3).reshape(10)
    rng = np.random.default_rng(0)
    rows = []
    for split, videos in (("train", 8), ("val", 4), ("test", 4)):
        for v in range(videos):
            label = v % 2
            for f in range(4):
                rel = f"crops/{split}/v{v}/{f}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(root / rel), _toy_image(label, size, rng))
                rows.append(
                    dict(
                        path=rel,
                        dataset="toy",
                        split=split,
                        video=f"{split}{v}",
                        frame=f,
                        label=label,
                        method="checker" if label else "real",
                        compression="png",
                        x1=0,
                        y1=0,
                        x2=size,
                        y2=size,
                        score=1.0,
                        detector="none",
                        landmarks=landmarks,
                        landmarks_source="crop",
                    )
                )
    return manifest.write(manifest.to_frame(rows), root / "manifest.parquet")
