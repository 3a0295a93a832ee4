"""Robustness perturbations of face crops: the DeeperForensics-1.0 types at five levels, plus true JPEG.

Definitions follow DeeperForensics-1.0 (`perturbation/distortions.py`), restated in
`spec/perturbations.md`; that code works on BGR frames and these functions on RGB `uint8` H×W×3 crops, which
changes nothing for the channel-independent types and uses OpenCV's RGB colour codes for the YCbCr ones.

Type names (level 1 → 5 parameters in `PERTURBATIONS`):

- `saturation` (DF "CS"): chroma deviation scaled by 0.4 … 0.0 in DF's scaled YCbCr; level 5 is grey.
- `contrast` (DF "CC"): `uint8(img * p)`, a multiplicative darkening, truncated.
- `block` (DF "BW"): `(min(H, W) // 256) * p` grey (128) 8×8 squares at random positions. The count
  refers to the crop's size, so **a crop under 256 px gets no blocks at all** (DF's exact definition).
- `noise` (DF "GNC"): N(0, p) noise on Y, Cb and Cr of DF's scaled YCbCr / 255, then clipped.
- `blur` (DF "GB"): `cv2.GaussianBlur` with a k×k kernel and sigma k / 6.
- `pixelation` (DF "JPEG", which is not JPEG): bilinear resize down by f, then back up.
- `pixelation_nearest`: blocky mosaic, block means (area resize down by f) shown as f×f squares.
- `compression` (DF "VC"): DF runs `ffmpeg -crf p` on the whole video (libx264 defaults). Here the frames of
  a video are encoded as one H.264 stream at CRF p with x264's defaults (preset medium, B-frames, mb-tree,
  yuv420p) and decoded, through PyAV (`compress_sequence`); the robustness protocol passes the sampled
  crops of each video together. One image alone is a one-frame stream, which x264 quantises more coarsely
  than frames within a video (about 4 dB lower PSNR): pass sequences wherever frames come from a video.
- `jpeg`: true JPEG at quality 90 … 10 (OpenCV `imencode`).

DF's own codes (`CS`, `CC`, `BW`, `GNC`, `GB`, `JPEG`, `VC`, case-sensitive, in `DF_CODES`) are accepted as
aliases: note that upper-case `JPEG` is DF's bilinear pixelation and lower-case `jpeg` is real JPEG.

Perturbing crops rather than full frames is deterministic and fast but does not match the released
DeeperForensics videos bit for bit (those also carry an XVID + H.264 CRF 23 generation); resize factors
and block counts refer to the crop.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from fractions import Fraction

import av
import cv2
import numpy as np

PERTURBATIONS: dict[str, tuple[float | int, ...]] = {
    "saturation": (0.4, 0.3, 0.2, 0.1, 0.0),
    "contrast": (0.85, 0.725, 0.6, 0.475, 0.35),
    "block": (16, 32, 48, 64, 80),
    "noise": (0.001, 0.002, 0.005, 0.01, 0.05),
    "blur": (7, 9, 13, 17, 21),
    "pixelation": (2, 3, 4, 5, 6),
    "pixelation_nearest": (2, 3, 4, 5, 6),
    "compression": (30, 32, 35, 38, 40),
    "jpeg": (90, 70, 50, 30, 10),
}

DF_CODES: dict[str, str] = {
    "CS": "saturation",
    "CC": "contrast",
    "BW": "block",
    "GNC": "noise",
    "GB": "blur",
    "JPEG": "pixelation",
    "VC": "compression",
}

# The supplementary's Table 5 / Figure 1 interference columns (compression, blur, contrast, saturation,
# pixelation) as our type names: VC, GB, CC, CS and DF's "JPEG" respectively (spec's mapping table).
SEED_TABLE5: tuple[str, ...] = ("compression", "blur", "contrast", "saturation", "pixelation")

LEVELS: tuple[int, ...] = (1, 2, 3, 4, 5)

BLOCK_SIZE = 8
BLOCK_GREY = 128
# DF's scaled YCbCr: luma onto [16, 235] / 255 and chroma onto [16, 240] / 255 of OpenCV's float YCrCb.
LUMA_RANGE = 235 - 16
CHROMA_RANGE = 240 - 16


def stable_seed(*parts: str | int) -> int:
    """A 63-bit seed from the parts, equal in every process (Python's `hash()` is salted per process)."""
    text = "\x1f".join(f"{type(part).__name__}:{part}" for part in parts)
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def _rgb_to_scaled_ycbcr(image: np.ndarray) -> np.ndarray:
    """DF's `bgr2ycbcr` for RGB input: channels (Y, Cb, Cr), float32."""
    ycrcb = cv2.cvtColor(image.astype(np.float32), cv2.COLOR_RGB2YCrCb)
    ycbcr = ycrcb[:, :, (0, 2, 1)].astype(np.float32)
    ycbcr[:, :, 0] = (ycbcr[:, :, 0] * LUMA_RANGE + 16) / 255.0
    ycbcr[:, :, 1:] = (ycbcr[:, :, 1:] * CHROMA_RANGE + 16) / 255.0
    return ycbcr


def _scaled_ycbcr_to_rgb(ycbcr: np.ndarray) -> np.ndarray:
    """DF's `ycbcr2bgr` producing RGB: the exact inverse of `_rgb_to_scaled_ycbcr`, float32, unclipped."""
    ycbcr = ycbcr.astype(np.float32)
    ycbcr[:, :, 0] = (ycbcr[:, :, 0] * 255.0 - 16) / LUMA_RANGE
    ycbcr[:, :, 1:] = (ycbcr[:, :, 1:] * 255.0 - 16) / CHROMA_RANGE
    return cv2.cvtColor(np.ascontiguousarray(ycbcr[:, :, (0, 2, 1)]), cv2.COLOR_YCrCb2RGB)


def _truncate_to_uint8(values: np.ndarray) -> np.ndarray:
    """DF's bare `astype(uint8)`; the clip only pins float overshoot (under 0.1) so the cast never wraps."""
    return np.clip(values, 0, 255).astype(np.uint8)


def _saturation(image: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    ycbcr = _rgb_to_scaled_ycbcr(image)
    ycbcr[:, :, 1:] = 0.5 + (ycbcr[:, :, 1:] - 0.5) * factor
    return _truncate_to_uint8(_scaled_ycbcr_to_rgb(ycbcr))


def _contrast(image: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    # float32 as in DF; float64 truncates differently where the product is an integer (180 * 0.35).
    return (image.astype(np.float32) * factor).astype(np.uint8)


def _block(image: np.ndarray, per_256px: int, rng: np.random.Generator) -> np.ndarray:
    height, width = image.shape[:2]
    count = min(height, width) // 256 * per_256px
    out = image.copy()
    for _ in range(count):
        # DF draws random.randint(0, size - 1 - 8), both ends inclusive.
        left = int(rng.integers(0, width - 1 - BLOCK_SIZE, endpoint=True))
        top = int(rng.integers(0, height - 1 - BLOCK_SIZE, endpoint=True))
        out[top : top + BLOCK_SIZE, left : left + BLOCK_SIZE] = BLOCK_GREY
    return out


def _noise(image: np.ndarray, variance: float, rng: np.random.Generator) -> np.ndarray:
    ycbcr = _rgb_to_scaled_ycbcr(image) / 255.0
    noisy = (ycbcr + math.sqrt(variance) * rng.standard_normal(ycbcr.shape)) * 255.0
    return np.clip(_scaled_ycbcr_to_rgb(noisy), 0, 255).astype(np.uint8)


def _blur(image: np.ndarray, kernel: int, rng: np.random.Generator) -> np.ndarray:
    return cv2.GaussianBlur(image, (kernel, kernel), kernel / 6)


def _reduced_size(image: np.ndarray, factor: int) -> tuple[int, int]:
    height, width = image.shape[:2]
    if height < factor or width < factor:
        raise ValueError(f"image of {width}x{height} px is too small to pixelate by a factor of {factor}")
    return width // factor, height // factor


def _pixelation(image: np.ndarray, factor: int, rng: np.random.Generator) -> np.ndarray:
    small = cv2.resize(image, _reduced_size(image, factor), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(small, image.shape[1::-1], interpolation=cv2.INTER_LINEAR)


def _pixelation_nearest(image: np.ndarray, factor: int, rng: np.random.Generator) -> np.ndarray:
    small = cv2.resize(image, _reduced_size(image, factor), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, image.shape[1::-1], interpolation=cv2.INTER_NEAREST)


def compress_sequence(frames: Sequence[np.ndarray], crf: int, fps: int = 25) -> list[np.ndarray]:
    """DF's video compression: the frames as one libx264 stream at `crf` (x264 defaults otherwise), decoded.

    Frames of another size than the first are resized to it for the encode and back afterwards (face crops of
    one video can differ by a pixel).
    The RGB <-> YUV 4:2:0 conversions are OpenCV's (BT.601), so no libswscale path depends on stray memory.
    """
    frames = [_check_image(frame) for frame in frames]
    if not frames:
        return []
    height, width = frames[0].shape[:2]
    encoder = av.CodecContext.create("libx264", "w")
    # yuv420p needs even sides: the last row / column is replicated, and cut after decoding. The bitstream is not
    # always bit-identical from call to call (libx264 through PyAV, one thread): outputs agree within codec noise.
    pad_x, pad_y = width % 2, height % 2
    encoder.width, encoder.height = width + pad_x, height + pad_y
    encoder.pix_fmt = "yuv420p"
    encoder.time_base = Fraction(1, fps)
    encoder.framerate = Fraction(fps, 1)
    encoder.thread_count = 1
    encoder.options = {"crf": str(crf)}
    packets = []
    for index, image in enumerate(frames):
        if image.shape[:2] != (height, width):
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        padded = np.pad(image, ((0, pad_y), (0, pad_x), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(cv2.cvtColor(padded, cv2.COLOR_RGB2YUV_I420), format="yuv420p")
        frame.pts = index
        packets += encoder.encode(frame)
    packets += encoder.encode(None)
    decoder = av.CodecContext.create("h264", "r")
    decoder.thread_count = 1  # frame-threaded decoding hands out frames whose buffers it still writes to
    decoded = []
    for packet in [*packets, None]:
        for out in decoder.decode(packet):  # converted at once: the decoder may reuse its frames
            decoded.append((out.pts, cv2.cvtColor(out.to_ndarray(), cv2.COLOR_YUV2RGB_I420)[:height, :width]))
    if len(decoded) != len(frames):
        raise ValueError(f"H.264 round trip returned {len(decoded)} of {len(frames)} frames")
    outputs = []
    for original, (_, image) in zip(frames, sorted(decoded, key=lambda item: item[0]), strict=True):
        if original.shape[:2] != (height, width):
            image = cv2.resize(image, original.shape[1::-1], interpolation=cv2.INTER_LINEAR)
        outputs.append(image)
    return outputs


def _compression(image: np.ndarray, crf: int, rng: np.random.Generator) -> np.ndarray:
    return compress_sequence([image], crf)[0]


def _jpeg(image: np.ndarray, quality: int, rng: np.random.Generator) -> np.ndarray:
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"OpenCV could not JPEG-encode an image of shape {image.shape}")
    return cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


_FUNCTIONS: dict[str, Callable[[np.ndarray, float, np.random.Generator], np.ndarray]] = {
    "saturation": _saturation,
    "contrast": _contrast,
    "block": _block,
    "noise": _noise,
    "blur": _blur,
    "pixelation": _pixelation,
    "pixelation_nearest": _pixelation_nearest,
    "compression": _compression,
    "jpeg": _jpeg,
}


def canonical_kind(kind: str) -> str:
    """Our type name for a type name or a DeeperForensics code; ValueError naming the allowed values."""
    if kind in PERTURBATIONS:
        return kind
    if kind in DF_CODES:
        return DF_CODES[kind]
    allowed = ", ".join([*PERTURBATIONS, *DF_CODES])
    raise ValueError(f"unknown perturbation type {kind!r}; allowed: {allowed}")


def _check_level(level: int) -> int:
    if isinstance(level, bool) or not isinstance(level, int | np.integer) or int(level) not in LEVELS:
        raise ValueError(f"unknown perturbation level {level!r}; allowed: {', '.join(map(str, LEVELS))}")
    return int(level)


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"perturbations take RGB uint8 HxWxC=3 images, got dtype {image.dtype} shape {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"cannot perturb an empty image of shape {image.shape}")
    return np.ascontiguousarray(image)


# Types DF defines over a whole video: the robustness protocol perturbs each video's frames together.
SEQUENCE_KINDS: tuple[str, ...] = ("compression",)


def perturb_sequence(frames: Sequence[np.ndarray], kind: str, level: int) -> list[np.ndarray]:
    """A sequence type (`SEQUENCE_KINDS`) applied to the frames of one video, in their order."""
    name = canonical_kind(kind)
    if name not in SEQUENCE_KINDS:
        raise ValueError(
            f"{name!r} is applied per image, not per sequence (sequence types: {', '.join(SEQUENCE_KINDS)})"
        )
    return compress_sequence(frames, int(PERTURBATIONS[name][_check_level(level) - 1]))


def perturb(image: np.ndarray, kind: str, level: int, seed: int = 0) -> np.ndarray:
    """Apply one perturbation; the random types (`block`, `noise`) draw only from a generator seeded here."""
    name = canonical_kind(kind)
    level = _check_level(level)
    image = _check_image(image)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"perturbation seed must be a non-negative integer, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    return _FUNCTIONS[name](image, PERTURBATIONS[name][level - 1], rng)


class Perturbation:
    """A picklable transform for Datasets: `Perturbation("blur", 3)(image, seed)`."""

    def __init__(self, kind: str, level: int) -> None:
        self.kind = canonical_kind(kind)
        self.level = _check_level(level)

    def __call__(self, image: np.ndarray, seed: int = 0) -> np.ndarray:
        return perturb(image, self.kind, self.level, seed)

    def __repr__(self) -> str:
        return f"Perturbation(kind={self.kind!r}, level={self.level})"
