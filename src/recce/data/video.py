"""Reading frames from videos (PyAV), frame folders and still images, as RGB uint8 arrays.

Inputs are untrusted: an image or video larger than `max_pixels` (default: 8K UHD) is refused from its header,
before anything is decoded, and every decoding failure of PyAV, OpenCV or Pillow becomes a MediaError naming
the file, so a batch job reports it and goes on. Videos are turned upright by their display matrix (the
rotation phones record instead of rotating the pixels).

Extraction wants a few frames from long videos, so `read_frames` decodes forward but converts only the
wanted frames, and jumps ahead with a keyframe seek when that skips enough decoding. Frame index i is the
i-th frame in presentation order; after a seek, frames are identified by their timestamp in a demuxed
packet table, so seeking never changes which frame an index names.
"""

from __future__ import annotations

import bisect
import os
import re
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np
from PIL import Image

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
MEDIA_KINDS = ("video", "frames", "image")
# decoding this many frames costs about as much as one seek (container seek, decoder flush, refill)
MIN_SEEK_SKIP = 8
MAX_PIXELS = 7680 * 4320  # 8K UHD: the largest frame accepted by default (about 100 MB decoded as RGB)
# what decoding libraries raise on hostile or damaged input, besides their own error types
DECODE_ERRORS = (av.FFmpegError, cv2.error, OSError, ValueError, MemoryError, EOFError, UnicodeDecodeError)


class MediaError(ValueError):
    """An input file or folder that cannot be read, with the path and the reason in the message."""


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    fps: float
    width: int
    height: int


@dataclass(frozen=True)
class PacketTable:
    """Presentation timestamps of a video stream's packets in order, and which positions are keyframes."""

    pts: list[int]
    keyframes: list[int]

    def index_of(self, pts: int | None) -> int | None:
        position = bisect.bisect_left(self.pts, pts) if pts is not None else len(self.pts)
        return position if position < len(self.pts) and self.pts[position] == pts else None


def last_line(error: BaseException) -> str:
    """The line of a library's error that says what failed (OpenCV's messages span lines; the last one does)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else error.__class__.__name__


def _media_error(path: Path, error: Exception, what: str = "video") -> MediaError:
    reason = getattr(error, "strerror", None) or last_line(error)
    return MediaError(f"{path}: not a readable {what} ({reason})")


def check_pixels(path: Path, width: int, height: int, max_pixels: int) -> None:
    """Refuse a picture too large to decode safely (read from the header, before decoding)."""
    if width * height > max_pixels:
        raise MediaError(
            f"{path}: {width}x{height} pixels is over the limit of {max_pixels} (raise it with --max-pixels)"
        )


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise MediaError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise MediaError(f"{path}: empty file")


def _open_video(
    path: Path, max_pixels: int = MAX_PIXELS
) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    _check_file(path)
    try:
        container = av.open(os.fspath(path), mode="r")
    except DECODE_ERRORS as error:
        raise _media_error(path, error) from None
    if not container.streams.video:
        container.close()
        raise MediaError(f"{path}: no video stream")
    stream = container.streams.video[0]
    try:
        check_pixels(path, stream.codec_context.width, stream.codec_context.height, max_pixels)
    except MediaError:
        container.close()
        raise
    return container, stream


def upright(frame: av.VideoFrame, stream: av.video.stream.VideoStream) -> np.ndarray:
    """The frame as RGB, turned as its display matrix says (counter-clockwise degrees; older PyAV: `rotate` tag)."""
    rotation = getattr(frame, "rotation", None)
    if rotation is None:
        rotation = -int(stream.metadata.get("rotate", 0) or 0)  # the tag counts clockwise
    image = frame.to_ndarray(format="rgb24")
    turns = round(rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(image, turns)) if turns else image


def packet_table(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> PacketTable | None:
    """Demux (no decoding) the video stream's packets; None when some packet lacks a timestamp."""
    path = Path(path)
    container, stream = _open_video(path, max_pixels)
    pts: list[tuple[int, bool]] = []
    try:
        with container:
            for packet in container.demux(stream):
                if packet.size == 0:  # the flush packet at the end of the stream
                    continue
                if packet.pts is None:
                    return None
                pts.append((packet.pts, packet.is_keyframe))
    except DECODE_ERRORS as error:
        raise _media_error(path, error) from None
    pts.sort()
    return PacketTable(pts=[p for p, _ in pts], keyframes=[i for i, (_, key) in enumerate(pts) if key])


def probe(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> VideoInfo:
    """Frame count, rate and size; the count comes from the stream header, or from demuxing when absent."""
    path = Path(path)
    container, stream = _open_video(path, max_pixels)
    with container:
        frames = stream.frames
        rate = stream.average_rate or stream.guessed_rate
        width, height = stream.codec_context.width, stream.codec_context.height
    if frames <= 0:
        table = packet_table(path, max_pixels)
        frames = len(table.pts) if table is not None else _count_decoded(path, max_pixels)
    if frames <= 0:
        raise MediaError(f"{path}: video has no frames")
    return VideoInfo(frames=frames, fps=float(rate) if rate else 0.0, width=width, height=height)


def _count_decoded(path: Path, max_pixels: int) -> int:
    container, stream = _open_video(path, max_pixels)
    try:
        with container:
            return sum(1 for _ in container.decode(stream))
    except DECODE_ERRORS as error:
        raise _media_error(path, error) from None


def sample_indices(n_frames: int, mode: str = "uniform", count: int = 32, every: int = 1) -> list[int]:
    """Frame indices to extract; uniform is DeepfakeBench's `linspace(0, n-1, count)`, rounded, unique."""
    if n_frames <= 0:
        return []
    if mode == "uniform":
        if count <= 0:
            raise ValueError(f"frame count must be positive, got {count}")
        return sorted({int(i) for i in np.rint(np.linspace(0, n_frames - 1, count))})
    if mode == "every":
        if every <= 0:
            raise ValueError(f"frame step must be positive, got {every}")
        return list(range(0, n_frames, every))
    if mode == "all":
        return list(range(n_frames))
    raise ValueError(f"unknown sampling mode {mode!r}; expected uniform, every or all")


def seek_plan(wanted: Sequence[int], keyframes: Sequence[int], min_skip: int = MIN_SEEK_SKIP) -> dict[int, int]:
    """Map a wanted frame to the keyframe to seek to before decoding it, when seeking skips > min_skip frames.

    `wanted` is sorted; decoding proceeds forward, so after frame t the decoder stands at t + 1.
    """
    plan: dict[int, int] = {}
    position = 0
    for target in wanted:
        at = bisect.bisect_right(keyframes, target) - 1
        if at >= 0 and keyframes[at] - position > min_skip:
            plan[target] = keyframes[at]
        position = target + 1
    return plan


def _wanted(indices: Sequence[int], path: Path) -> list[int]:
    wanted = sorted({int(i) for i in indices})
    if wanted and wanted[0] < 0:
        raise ValueError(f"{path}: negative frame index {wanted[0]}")
    return wanted


def read_frames(
    path: str | os.PathLike,
    indices: Sequence[int],
    *,
    min_seek_skip: int = MIN_SEEK_SKIP,
    max_pixels: int = MAX_PIXELS,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (index, upright RGB uint8 frame) for the wanted indices, in increasing order.

    A wanted frame the video does not contain (truncated or damaged stream) raises MediaError after the
    frames before it were yielded.
    """
    path = Path(path)
    wanted = _wanted(indices, path)
    if not wanted:
        return
    table = packet_table(path, max_pixels)
    seeks = seek_plan(wanted, table.keyframes, min_seek_skip) if table is not None else {}
    container, stream = _open_video(path, max_pixels)
    pending = deque(wanted)
    decoded_count = 0
    try:
        with container:
            frames = container.decode(stream)
            while pending:
                if pending[0] in seeks:
                    container.seek(table.pts[seeks.pop(pending[0])], stream=stream)
                    frames = container.decode(stream)
                frame = next(frames, None)
                if frame is None:
                    break
                if table is None:
                    index = decoded_count
                else:
                    index = table.index_of(frame.pts)
                    if index is None:
                        raise MediaError(f"{path}: decoded frame timestamp {frame.pts} is not in the container")
                decoded_count += 1
                if index == pending[0]:
                    pending.popleft()
                    check_pixels(path, frame.width, frame.height, max_pixels)  # a stream may change size mid-way
                    yield index, upright(frame, stream)
                elif index > pending[0]:
                    break
    except MediaError:
        raise
    except DECODE_ERRORS as error:
        raise _media_error(path, error) from None
    if pending:
        raise MediaError(f"{path}: frame {pending[0]} is missing (stream ends or skips it; truncated or damaged video)")


def _natural_key(name: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def list_frame_files(folder: str | os.PathLike) -> list[Path]:
    """Image files of a frame folder in frame order: numeric parts of names compare as numbers."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MediaError(f"{folder}: frame folder not found")
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise MediaError(f"{folder}: frame folder holds no images")
    return sorted(files, key=lambda p: _natural_key(p.name))


def image_size(path: Path, max_pixels: int = MAX_PIXELS) -> tuple[int, int] | None:
    """(width, height) from the image header (Pillow reads it without decoding), None for a format it lacks."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return image.size
    except Image.DecompressionBombError:  # over twice Pillow's own bound, which it checks before telling the size
        bound = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        if bound < max_pixels:
            return None  # a limit above Pillow's: OpenCV reads the header, and the decoded size is checked
        raise MediaError(
            f"{path}: more than {bound} pixels is over the limit of {max_pixels} (raise it with --max-pixels)"
        ) from None
    except (Image.UnidentifiedImageError, *DECODE_ERRORS):
        return None


def read_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an image file as RGB uint8 (grey and alpha images are converted to 3 channels)."""
    path = Path(path)
    _check_file(path)
    size = image_size(path, max_pixels)
    if size is not None:
        check_pixels(path, *size, max_pixels)
    try:
        image = cv2.imread(os.fspath(path), cv2.IMREAD_COLOR)
    except DECODE_ERRORS as error:
        raise _media_error(path, error, "image") from None
    if image is None:
        raise MediaError(f"{path}: not a readable image")
    check_pixels(path, image.shape[1], image.shape[0], max_pixels)  # a format Pillow could not size
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def media_length(source: str | os.PathLike, kind: str, max_pixels: int = MAX_PIXELS) -> int:
    """Number of frames of a video, a frame folder (its images) or a still image (1)."""
    if kind == "video":
        return probe(source, max_pixels).frames
    if kind == "frames":
        return len(list_frame_files(source))
    if kind == "image":
        _check_file(Path(source))
        return 1
    raise ValueError(f"unknown media kind {kind!r}; expected one of {', '.join(MEDIA_KINDS)}")


def read_media(
    source: str | os.PathLike, kind: str, indices: Sequence[int], max_pixels: int = MAX_PIXELS
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (index, RGB frame) for the wanted indices of a video, frame folder or still image (index 0)."""
    source = Path(source)
    if kind == "video":
        yield from read_frames(source, indices, max_pixels=max_pixels)
        return
    wanted = _wanted(indices, source)
    files = list_frame_files(source) if kind == "frames" else [source] if kind == "image" else None
    if files is None:
        raise ValueError(f"unknown media kind {kind!r}; expected one of {', '.join(MEDIA_KINDS)}")
    if wanted and wanted[-1] >= len(files):
        raise MediaError(f"{source}: frame {wanted[-1]} requested but only {len(files)} available")
    for index in wanted:
        yield index, read_image(files[index], max_pixels)
