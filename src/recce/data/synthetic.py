"""A built-in synthetic face-forgery benchmark, so RECCE can be tried with nothing downloaded.

Faces are drawn procedurally (OpenCV shapes drawn 2x supersampled, shaded by a light direction, over a textured
background, with sensor noise); an identity is a short "video" whose frames share its parameters and differ by small
pose, expression and lighting changes. Four manipulations leave the kinds of traces real forgeries leave:

- "faceswap": another identity's inner face blended in with a feathered mask and imperfect colour correction
  (blending boundary, colour and illumination mismatch);
- "expression": the mouth, the eyes or both moved by a smooth displacement field (warping and resampling traces);
- "rerender": the inner face re-rendered from a low-resolution texture (resolution inconsistency);
- "upsample": the face passed through a generator's transposed-convolution upsampling (periodic checkerboard).

Every image is a face crop laid out as a 1.3x conservative square crop would give: the face centred, its box about
1/1.3 of the image side. Manipulations rely on that layout instead of landmarks, so they keep the target's background.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from recce.data import manifest

METHODS: tuple[str, ...] = ("faceswap", "expression", "rerender", "upsample")
SPLITS: tuple[str, ...] = ("train", "val", "test")
STAMP_NAME = "synthetic.json"
MANIFEST_NAME = "manifest.parquet"

_SUPERSAMPLE = 2  # faces are drawn at twice the output size, then area-downsampled: anti-aliasing and smooth edges
_FACE_HALF_HEIGHT = 1 / 2.6  # of the image side: a 1.3x square crop around a face box 2b high has side 2.6b
_SHIFT = 4  # fractional bits of OpenCV drawing coordinates
# The inner face (brows, eyes, nose, mouth) in image-side units, where every identity's features fall for the small
# poses drawn here: centre x, centre y, half-width, half-height.
_INNER_FACE = (0.5, 0.565, 0.235, 0.205)
_FACE = (0.5, 0.53, 0.3, 0.36)  # the whole face, forehead to chin
_MOUTH = (0.5, 0.72, 0.23, 0.15)
_EYES = (0.5, 0.5, 0.25, 0.1)


class SyntheticError(ValueError):
    """A synthetic-benchmark request that cannot be carried out, with the folder or setting named."""


@dataclass(frozen=True)
class SyntheticConfig:
    """What `generate` makes; the defaults give a small benchmark (960 crops of 128 px) made in seconds."""

    identities: int = 120  # people; each yields one real and one fake video, so real and fake frames balance
    frames_per_video: int = 4  # frames of each video (same identity, small pose/expression/lighting changes)
    size: int = 128  # side of the square face crops in pixels
    methods: tuple[str, ...] = METHODS  # manipulations; identity i's fake video uses methods[i % len(methods)]
    jpeg_qualities: tuple[int, ...] | None = (95, 85, 75)  # JPEG quality drawn per video; None saves PNG
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)  # train/val/test shares of the identities
    seed: int = 0  # everything (faces, splits, manipulations, qualities) follows from it
    strength: float = 1.0  # scales every manipulation's trace; 1.0 is clearly visible at 96 px


# ----------------------------------------------------------------------------------------------- identities


_IRIS_COLOURS = np.array(
    [[70, 45, 25], [40, 25, 15], [90, 120, 160], [80, 110, 70], [110, 85, 45], [110, 115, 120]], np.float32
)
_HAIR_COLOURS = np.array(
    [
        [20, 16, 14],
        [45, 30, 20],
        [85, 55, 32],
        [130, 95, 60],
        [200, 165, 110],
        [150, 65, 30],
        [170, 165, 160],
    ],
    np.float32,
)
_HAIR_STYLES = ("short", "long", "fringe", "curly", "buzz", "bald")


@dataclass(frozen=True)
class _Identity:
    """Appearance of one person and their scene; lengths are fractions of the face's half-width a or half-height b."""

    scale: float
    aspect: float  # a / b
    forehead_power: float  # superellipse exponent of the upper face: >2 broad forehead
    jaw_power: float  # of the lower face: <2 pointed chin, >2 square jaw
    jaw_taper: float
    skin: np.ndarray
    lips: np.ndarray
    blush: float
    eye_size: float
    eye_spacing: float
    eye_y: float
    eye_tilt: float
    iris: np.ndarray
    brow_thickness: float
    brow_gap: float
    brow_arch: float
    brow_colour: np.ndarray
    nose_length: float
    nose_width: float
    mouth_y: float
    mouth_width: float
    upper_lip: float
    lower_lip: float
    hair_style: str
    hair: np.ndarray
    hairline: float
    clothes: np.ndarray
    light_azimuth: float
    light_elevation: float
    ambient: float
    scene_gradient: float
    white_balance: np.ndarray
    noise_sigma: float
    blur_sigma: float


def _draw_identity(rng: np.random.Generator) -> _Identity:
    darkness = rng.beta(1.6, 2.2)
    light_skin, dark_skin = np.array([240, 205, 180], np.float32), np.array([90, 58, 40], np.float32)
    skin = light_skin + (dark_skin - light_skin) * darkness
    skin = skin * rng.uniform([0.97, 0.95, 0.9], [1.04, 1.02, 1.02])
    lips = skin * 0.35 + np.array([165, 60, 70], np.float32) * 0.65 * rng.uniform(0.65, 0.95)
    hair_style = _HAIR_STYLES[rng.choice(len(_HAIR_STYLES), p=[0.26, 0.26, 0.14, 0.12, 0.12, 0.1])]
    hair = _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))] * rng.uniform(0.85, 1.15)
    return _Identity(
        scale=rng.uniform(0.95, 1.03),
        aspect=rng.uniform(0.72, 0.86),
        forehead_power=rng.uniform(2.0, 2.5),
        jaw_power=rng.uniform(1.6, 2.6),
        jaw_taper=rng.uniform(0.0, 0.15),
        skin=skin,
        lips=lips,
        blush=rng.uniform(0.0, 0.25),
        eye_size=rng.uniform(0.17, 0.23),
        eye_spacing=rng.uniform(0.36, 0.44),
        eye_y=rng.uniform(-0.06, 0.04),
        eye_tilt=rng.uniform(-6, 6),
        iris=_IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))] * rng.uniform(0.8, 1.2),
        brow_thickness=rng.uniform(0.035, 0.07),
        brow_gap=rng.uniform(0.15, 0.24),
        brow_arch=rng.uniform(0.0, 0.08),
        brow_colour=np.minimum(hair, 140) * rng.uniform(0.6, 0.9),
        nose_length=rng.uniform(0.27, 0.37),
        nose_width=rng.uniform(0.15, 0.23),
        mouth_y=rng.uniform(0.5, 0.6),
        mouth_width=rng.uniform(0.32, 0.46),
        upper_lip=rng.uniform(0.035, 0.06),
        lower_lip=rng.uniform(0.05, 0.09),
        hair_style=hair_style,
        hair=hair,
        hairline=rng.uniform(0.42, 0.62),
        clothes=rng.uniform(20, 230, 3).astype(np.float32),
        light_azimuth=rng.uniform(-math.pi, math.pi),
        light_elevation=rng.uniform(0.35, 0.75),
        ambient=rng.uniform(0.45, 0.65),
        scene_gradient=rng.uniform(0.0, 0.25),
        white_balance=rng.uniform(0.93, 1.07, 3).astype(np.float32),
        noise_sigma=rng.uniform(2.5, 4.5),
        blur_sigma=rng.uniform(0.0, 0.35),
    )


# ----------------------------------------------------------------------------------------------- drawing


def _fixed(value: float) -> int:
    return int(round(value * (1 << _SHIFT)))


def _polygon(points: np.ndarray) -> np.ndarray:
    return np.round(points * (1 << _SHIFT)).astype(np.int32)


def _shape_mask(n: int, draw: Callable[[np.ndarray], None]) -> np.ndarray:
    """Alpha in [0, 1] of a shape drawn anti-aliased by `draw` onto an 8-bit canvas."""
    mask = np.zeros((n, n), np.uint8)
    draw(mask)
    return mask.astype(np.float32) * (1 / 255)


def _ellipse_mask(
    n: int,
    centre: tuple[float, float],
    axes: tuple[float, float],
    angle: float = 0.0,
    arc: tuple[float, float] = (0, 360),
    thickness: int = -1,
) -> np.ndarray:
    """A filled ellipse, or with `thickness` > 0 an outline along `arc` (degrees)."""
    centre_fixed = (_fixed(centre[0]), _fixed(centre[1]))
    axes_fixed = (_fixed(max(axes[0], 0.5)), _fixed(max(axes[1], 0.5)))
    return _shape_mask(
        n, lambda m: cv2.ellipse(m, centre_fixed, axes_fixed, angle, *arc, 255, thickness, cv2.LINE_AA, _SHIFT)
    )


def _polygon_mask(n: int, points: np.ndarray) -> np.ndarray:
    return _shape_mask(n, lambda m: cv2.fillPoly(m, [_polygon(points)], 255, cv2.LINE_AA, _SHIFT))


def _stroke_mask(n: int, points: np.ndarray, thickness: float) -> np.ndarray:
    """An open polyline of the given width."""
    width = max(1, round(thickness))
    return _shape_mask(n, lambda m: cv2.polylines(m, [_polygon(points)], False, 255, width, cv2.LINE_AA, _SHIFT))


def _paint(canvas: np.ndarray, alpha: np.ndarray, colour: np.ndarray, opacity: float = 1.0) -> None:
    """Lay `colour` (one RGB or an image) over `canvas` through `alpha`, touching only the shape's bounding box."""
    x, y, w, h = cv2.boundingRect((alpha > 0).view(np.uint8))
    if w == 0:
        return
    box = (slice(y, y + h), slice(x, x + w))
    colour = np.asarray(colour, np.float32)
    if colour.ndim == 3:
        colour = colour[box]
    canvas[box] += (colour - canvas[box]) * (alpha[box] * opacity)[..., None]


def _smooth_noise(rng: np.random.Generator, n: int, cells: int, channels: int = 1) -> np.ndarray:
    """Band-limited noise in about [-1, 1]: a coarse random grid upsampled smoothly."""
    grid = rng.standard_normal((cells, cells, channels)).astype(np.float32)
    return cv2.resize(grid, (n, n), interpolation=cv2.INTER_CUBIC).reshape(n, n, channels)


def _background(rng: np.random.Generator, n: int) -> np.ndarray:
    """A static scene: smooth colour variation plus stripes, panels or nothing, slightly out of focus."""
    grey = rng.uniform(50, 210)
    base = (grey + (rng.uniform(20, 235, 3) - grey) * rng.uniform(0.15, 0.6)).astype(np.float32)
    other = np.clip(base + rng.normal(0, 35, 3), 10, 245).astype(np.float32)
    mix = 0.5 + 0.35 * _smooth_noise(rng, n, int(rng.integers(2, 6)))
    image = base + (other - base) * np.clip(mix, 0, 1)
    y, x = np.mgrid[0:n, 0:n].astype(np.float32) / n
    kind = rng.integers(3)
    if kind == 0:
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(0.05, 0.2)
        stripes = np.sin((x * math.cos(angle) + y * math.sin(angle)) * 2 * math.pi / period)
        image *= (1 + rng.uniform(0.05, 0.15) * stripes)[..., None]
    elif kind == 1:
        for _ in range(int(rng.integers(2, 5))):
            x1, y1 = rng.uniform(-0.2, 0.9, 2) * n
            w, h = rng.uniform(0.15, 0.6, 2) * n
            panel = _polygon_mask(n, np.array([[x1, y1], [x1 + w, y1], [x1 + w, y1 + h], [x1, y1 + h]]))
            _paint(image, panel, rng.uniform(30, 230, 3), rng.uniform(0.3, 0.8))
    image += 6 * _smooth_noise(rng, n, n // 3, 3)
    return cv2.GaussianBlur(image, (0, 0), rng.uniform(0.8, 2.0))


def _superellipse(a: float, b: float, upper_power: float, lower_power: float, taper: float) -> np.ndarray:
    """Face outline around the origin: superellipse halves, the lower one narrowing toward the chin."""
    t = np.linspace(0, 2 * math.pi, 96, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    power = np.where(s > 0, lower_power, upper_power)
    x = a * np.sign(c) * np.abs(c) ** (2 / power)
    y = b * np.sign(s) * np.abs(s) ** (2 / power)
    x *= 1 - taper * np.clip(y / b, 0, 1)
    return np.stack([x, y], axis=1)


def _hair_masks(ident: _Identity, n: int, cx: float, cy: float, a: float, b: float, rng: np.random.Generator):
    """Hair behind the head and over it, as soft alphas, and a strand texture; constant over a video."""
    y, x = np.mgrid[0:n, 0:n].astype(np.float32)
    u, v = (x - cx) / a, (y - cy) / b
    edge = 2.0 / b  # soft edge width in face units

    def inside(ru: float, rv: float, oy: float = 0.0) -> np.ndarray:
        r = np.sqrt((u / ru) ** 2 + ((v - oy) / rv) ** 2)
        return np.clip((1 - r) / edge + 0.5, 0, 1)

    back = np.zeros((n, n), np.float32)
    front = np.zeros((n, n), np.float32)
    style = ident.hair_style
    hairline = -ident.hairline + 0.25 * u**2  # lower at the temples
    if style in ("short", "long", "fringe", "buzz"):
        if style == "fringe":
            hairline = -ident.hairline + 0.2 + 0.05 * np.abs(u)
        cap = inside(1.07, 1.06, -0.03) * np.clip((hairline - v) / edge + 0.5, 0, 1)
        front = cap * (0.55 if style == "buzz" else 1.0)
    if style == "long":
        body = inside(1.22, 1.0, 0.15) + np.clip((1.22 - np.abs(u)) / edge, 0, 1) * np.clip((v - 0.15) / edge, 0, 1)
        back = np.clip(body, 0, 1)
    if style == "curly":
        back = inside(1.35, 1.22, -0.15)
        front = inside(1.2, 1.05, -0.1) * np.clip((hairline + 0.05 - v) / edge + 0.5, 0, 1)
        texture = _smooth_noise(rng, n, n // 3)[..., 0]
    else:
        strands = rng.standard_normal((n, n)).astype(np.float32)
        texture = cv2.GaussianBlur(strands, (0, 0), sigmaX=0.7, sigmaY=6.0) * 3
    return back, front, np.clip(texture, -1.5, 1.5)


@dataclass(frozen=True)
class _Pose:
    angle: float  # in-plane rotation, degrees
    shift: tuple[float, float]  # fraction of the image side
    scale: float
    yaw: float  # -1..1: horizontal squash and feature shift
    eye_open: float
    gaze: tuple[float, float]
    brow_raise: float
    mouth_open: float
    smile: float
    light_jitter: float
    light_gain: float


def _draw_pose(rng: np.random.Generator) -> _Pose:
    blink = rng.random() < 0.1
    return _Pose(
        angle=float(np.clip(rng.normal(0, 3), -6, 6)),
        shift=(rng.uniform(-0.02, 0.02), rng.uniform(-0.02, 0.02)),
        scale=rng.uniform(0.97, 1.03),
        yaw=rng.uniform(-0.6, 0.6),
        eye_open=rng.uniform(0.1, 0.3) if blink else rng.uniform(0.75, 1.05),
        gaze=(rng.uniform(-0.25, 0.25), rng.uniform(-0.1, 0.1)),
        brow_raise=rng.uniform(-0.02, 0.04),
        mouth_open=max(0.0, rng.uniform(-0.04, 0.08)),
        smile=rng.uniform(-0.1, 0.5),
        light_jitter=rng.normal(0, 0.12),
        light_gain=rng.uniform(0.95, 1.05),
    )


class _Renderer:
    """Draws one identity's frames; the per-identity textures are made once and reused by every frame."""

    def __init__(self, identity: int, size: int, seed: int):
        self.size = size
        self.n = n = size * _SUPERSAMPLE
        rng = np.random.default_rng([seed, identity, 0])
        self.ident = ident = _draw_identity(rng)
        self.b = b = _FACE_HALF_HEIGHT * n * ident.scale
        self.a = a = ident.aspect * b
        self.cx = self.cy = n / 2
        self.background = _background(rng, n)
        self.hair_back, self.hair_front, self.hair_texture = _hair_masks(ident, n, self.cx, self.cy, a, b, rng)
        self.skin_texture = _smooth_noise(rng, n, n // 4)[..., 0]
        self.outline = _superellipse(a, b, ident.forehead_power, ident.jaw_power, ident.jaw_taper)
        y, x = np.mgrid[0:n, 0:n].astype(np.float32)
        u, v = (x - self.cx) / (1.12 * a), (y - self.cy) / (1.1 * b)
        r2 = np.minimum(u**2 + v**2, 0.98)
        self.normals = np.stack([u, v, np.sqrt(1 - r2)], axis=-1) / np.sqrt(u**2 + v**2 + 1 - r2)[..., None]
        self.ramp = np.stack([x / n - 0.5, y / n - 0.5], axis=-1)
        self.hair_colour = ident.hair[None, None, :] * (1 + 0.22 * self.hair_texture[..., None])
        self.body = self._body()
        self.skull_rgb, skull_alpha = self._skull()
        self.head_alpha = np.maximum(skull_alpha, self.hair_front)

    def _body(self) -> np.ndarray:
        """Neck and shoulders as premultiplied RGBA; they stay still while the head moves."""
        n, a, b, ident = self.n, self.a, self.b, self.ident
        layer = np.zeros((n, n, 4), np.float32)
        rgb = layer[..., :3]
        shoulders = _ellipse_mask(n, (self.cx, self.cy + 1.65 * b), (2.3 * a, 0.75 * b))
        neck = _polygon_mask(
            n,
            np.array(
                [
                    [self.cx - 0.55 * a, self.cy],
                    [self.cx + 0.55 * a, self.cy],
                    [self.cx + 0.6 * a, n],
                    [self.cx - 0.6 * a, n],
                ]
            ),
        )
        _paint(rgb, neck, ident.skin * 0.72)
        _paint(rgb, shoulders, ident.clothes)
        alpha = np.maximum(neck, shoulders)
        layer[..., 3] = alpha
        rgb *= alpha[..., None]
        return layer

    def _skull(self) -> tuple[np.ndarray, np.ndarray]:
        """Hair behind the head, ears and bare face: the head's parts that no expression changes."""
        n, a, b, ident = self.n, self.a, self.b, self.ident
        rgb = self.hair_colour * self.hair_back[..., None]
        alpha = self.hair_back.copy()
        for side in (-1, 1):
            ear = _ellipse_mask(n, (self.cx + side * 0.97 * a, self.cy + 0.08 * b), (0.15 * a, 0.25 * b))
            _paint(rgb, ear, ident.skin * 0.88)
            alpha = np.maximum(alpha, ear)
        face = _polygon_mask(n, self.outline + (self.cx, self.cy))
        _paint(rgb, face, ident.skin[None, None, :] * (1 + 0.03 * self.skin_texture[..., None]))
        return rgb, np.maximum(alpha, face)

    def _head(self, pose: _Pose) -> np.ndarray:
        """The head in its canonical place as premultiplied RGBA (shaded, with hair)."""
        a, ident = self.a, self.ident
        rgb = self.skull_rgb.copy()
        shift = 0.08 * a * pose.yaw
        self._draw_cheeks(rgb, shift)
        self._draw_eyes(rgb, pose, shift)
        self._draw_nose(rgb, pose, shift)
        self._draw_mouth(rgb, pose, shift)

        _paint(rgb, self.hair_front, self.hair_colour)
        alpha = self.head_alpha

        azimuth = ident.light_azimuth + pose.light_jitter
        light = np.array(
            [
                math.cos(azimuth) * math.cos(ident.light_elevation),
                math.sin(azimuth) * math.cos(ident.light_elevation),
                math.sin(ident.light_elevation),
            ],
            np.float32,
        )
        diffuse = np.clip(self.normals @ light, 0, 1)
        shade = (ident.ambient + (1 - ident.ambient) * diffuse) * pose.light_gain * 1.1
        rgb *= (shade * alpha)[..., None]
        return np.concatenate([rgb, alpha[..., None]], axis=-1)

    def _draw_cheeks(self, rgb: np.ndarray, shift: float) -> None:
        n, a, b, ident = self.n, self.a, self.b, self.ident
        if ident.blush < 0.03:
            return
        blush = np.zeros((n, n), np.float32)
        for side in (-1, 1):
            blush = np.maximum(
                blush,
                _ellipse_mask(n, (self.cx + shift + side * 0.5 * a, self.cy + 0.3 * b), (0.2 * a, 0.12 * b)),
            )
        blush = cv2.GaussianBlur(blush, (0, 0), 0.08 * a)
        _paint(rgb, blush, np.array([200, 90, 90], np.float32), ident.blush)

    def _draw_eyes(self, rgb: np.ndarray, pose: _Pose, shift: float) -> None:
        n, a, b, ident = self.n, self.a, self.b, self.ident
        ew = ident.eye_size * a
        eh = ew * 0.48 * pose.eye_open
        ey = self.cy + ident.eye_y * b
        socket = np.zeros((n, n), np.float32)
        for side in (-1, 1):
            ex = self.cx + shift + side * ident.eye_spacing * a
            tilt = -side * ident.eye_tilt
            socket = np.maximum(socket, _ellipse_mask(n, (ex, ey - 0.1 * ew), (1.3 * ew, 0.8 * ew), tilt))
        socket = cv2.GaussianBlur(socket, (0, 0), 0.25 * ew)
        _paint(rgb, socket, ident.skin * 0.7, 0.5)
        for side in (-1, 1):
            ex = self.cx + shift + side * ident.eye_spacing * a
            tilt = -side * ident.eye_tilt
            sclera = _ellipse_mask(n, (ex, ey), (ew, eh), tilt)
            _paint(rgb, sclera, np.array([232, 226, 218], np.float32))
            ix, iy = ex + pose.gaze[0] * ew, ey + pose.gaze[1] * ew
            iris_r = 0.45 * ew
            _paint(rgb, _ellipse_mask(n, (ix, iy), (iris_r, iris_r)) * sclera, ident.iris)
            _paint(
                rgb,
                _ellipse_mask(n, (ix, iy), (0.45 * iris_r, 0.45 * iris_r)) * sclera,
                np.zeros(3, np.float32),
            )
            glint = _ellipse_mask(n, (ix + 0.3 * iris_r, iy - 0.35 * iris_r), (0.18 * iris_r, 0.18 * iris_r))
            _paint(rgb, glint * sclera, np.full(3, 250, np.float32), 0.9)
            lid = _ellipse_mask(n, (ex, ey), (ew, eh), tilt, arc=(180, 360), thickness=max(1, round(0.12 * ew)))
            _paint(rgb, lid, np.array([35, 25, 22], np.float32), 0.9)
            by = ey - ident.brow_gap * b - pose.brow_raise * b
            t = np.linspace(-1, 1, 9)
            xs = ex + side * t * 1.15 * ew + side * 0.1 * ew
            ys = by - ident.brow_arch * b * (1 - t**2) + 0.02 * b * t
            half = ident.brow_thickness * b * (1 - 0.45 * (t + 1) / 2)
            upper = np.stack([xs, ys - half], axis=1)
            lower = np.stack([xs, ys + half], axis=1)[::-1]
            _paint(rgb, _polygon_mask(n, np.concatenate([upper, lower])), ident.brow_colour, 0.85)

    def _draw_nose(self, rgb: np.ndarray, pose: _Pose, shift: float) -> None:
        n, a, b, ident = self.n, self.a, self.b, self.ident
        tip_x = self.cx + 1.6 * shift
        tip_y = self.cy + ident.nose_length * b
        top_y = self.cy + ident.eye_y * b
        dark_side = -1 if math.cos(ident.light_azimuth + pose.light_jitter) > 0 else 1
        nw = ident.nose_width * a
        ridge = np.array(
            [
                [self.cx + shift + dark_side * 0.25 * nw, top_y],
                [tip_x + dark_side * 0.75 * nw, tip_y - 0.02 * b],
            ]
        )
        shadow = _stroke_mask(n, ridge, 0.3 * nw)
        shadow = np.maximum(shadow, _ellipse_mask(n, (tip_x, tip_y + 0.06 * b), (1.1 * nw, 0.05 * b)))
        shadow = cv2.GaussianBlur(shadow, (0, 0), 0.2 * nw)
        _paint(rgb, shadow, ident.skin * 0.62, 0.55)
        for side in (-1, 1):
            nostril = _ellipse_mask(n, (tip_x + side * 0.45 * nw, tip_y + 0.02 * b), (0.22 * nw, 0.12 * nw), side * 20)
            _paint(rgb, cv2.GaussianBlur(nostril, (0, 0), 0.06 * nw), ident.skin * 0.35, 0.8)
        highlight = _ellipse_mask(n, (tip_x - dark_side * 0.2 * nw, tip_y - 0.06 * b), (0.3 * nw, 0.22 * nw))
        _paint(rgb, cv2.GaussianBlur(highlight, (0, 0), 0.2 * nw), np.minimum(ident.skin * 1.25, 255), 0.45)

    def _draw_mouth(self, rgb: np.ndarray, pose: _Pose, shift: float) -> None:
        n, a, b, ident = self.n, self.a, self.b, self.ident
        mx, my = self.cx + 1.2 * shift, self.cy + ident.mouth_y * b
        mw = ident.mouth_width * a * (1 + 0.12 * pose.smile)
        t = np.linspace(-1, 1, 25)
        xs = mx + t * mw
        bulge = (1 - t**2) ** 0.6
        line = my - pose.smile * 0.05 * b * t**2 + 0.04 * b * pose.smile
        gap = pose.mouth_open * b * bulge
        bow = 1 - 0.3 * np.exp(-((t / 0.18) ** 2))
        top = line - gap / 2 - ident.upper_lip * b * bulge * bow
        opening_top, opening_bottom = line - gap / 2, line + gap / 2
        bottom = line + gap / 2 + ident.lower_lip * b * bulge

        def band(upper: np.ndarray, lower: np.ndarray) -> np.ndarray:
            return _polygon_mask(n, np.concatenate([np.stack([xs, upper], 1), np.stack([xs, lower], 1)[::-1]]))

        shadow = cv2.GaussianBlur(band(bottom, bottom + 0.05 * b), (0, 0), 0.03 * b)
        _paint(rgb, shadow, ident.skin * 0.7, 0.5)
        _paint(rgb, band(top, opening_top + 0.3), ident.lips * 0.92)
        _paint(rgb, band(opening_bottom - 0.3, bottom), ident.lips)
        if pose.mouth_open > 0.005:
            _paint(rgb, band(opening_top, opening_bottom), np.array([60, 20, 25], np.float32))
            teeth = band(opening_top, opening_top + 0.45 * gap)
            _paint(rgb, teeth, np.array([225, 220, 205], np.float32), 0.9)
        seam = _stroke_mask(n, np.stack([xs, line], 1), 0.012 * b)
        _paint(rgb, seam, ident.lips * 0.45, 0.8)

    def frame(self, pose: _Pose, rng: np.random.Generator) -> tuple[np.ndarray, tuple[float, float, float, float]]:
        """One RGB uint8 frame and the face box (forehead to chin, cheek to cheek) in its pixels."""
        n, ident = self.n, self.ident
        squash = 1 - 0.08 * abs(pose.yaw)
        centre = np.array([self.cx, self.cy])
        rotation = cv2.getRotationMatrix2D((0.0, 0.0), pose.angle, 1.0)[:, :2]
        linear = rotation @ np.diag([pose.scale * squash, pose.scale])
        offset = centre + np.array(pose.shift) * n - linear @ centre
        head = cv2.warpAffine(self._head(pose), np.hstack([linear, offset[:, None]]), (n, n), flags=cv2.INTER_LINEAR)
        body_shift = np.float32([[1, 0, 0.4 * pose.shift[0] * n], [0, 1, 0.4 * pose.shift[1] * n]])
        body = cv2.warpAffine(self.body, body_shift, (n, n), flags=cv2.INTER_LINEAR)
        image = self.background * (1 - body[..., 3:]) + body[..., :3]
        image = image * (1 - head[..., 3:]) + head[..., :3]
        azimuth = ident.light_azimuth
        gradient = self.ramp @ np.array([math.cos(azimuth), math.sin(azimuth)], np.float32)
        image *= (1 + ident.scene_gradient * gradient)[..., None] * ident.white_balance
        image = cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_AREA)
        if ident.blur_sigma > 0.2:
            image = cv2.GaussianBlur(image, (0, 0), ident.blur_sigma)
        noise = rng.normal(0, ident.noise_sigma, image.shape[:2])[..., None] + rng.normal(
            0, 0.5 * ident.noise_sigma, image.shape
        )
        image = np.clip(image + noise, 0, 255).round().astype(np.uint8)
        outline = (self.outline + centre) @ linear.T + offset
        x1, y1 = outline.min(axis=0) / _SUPERSAMPLE
        x2, y2 = outline.max(axis=0) / _SUPERSAMPLE
        return image, (float(x1), float(y1), float(x2), float(y2))


def _render_video(identity: int, n_frames: int, size: int, seed: int):
    renderer = _Renderer(identity, size, seed)
    frames, boxes = [], []
    for index in range(n_frames):
        rng = np.random.default_rng([seed, identity, 1, index])
        image, box = renderer.frame(_draw_pose(rng), rng)
        frames.append(image)
        boxes.append(box)
    return frames, boxes


def render_identity_frames(identity: int, n_frames: int, size: int, seed: int) -> list[np.ndarray]:
    """Real frames (RGB uint8, size x size) of one identity; frame i does not depend on n_frames."""
    if size < 32:
        raise SyntheticError(f"size {size}: faces need at least 32 px")
    return _render_video(identity, n_frames, size, seed)[0]


# ----------------------------------------------------------------------------------------------- manipulations


def _soft_ellipse(
    size: int, region: tuple[float, float, float, float], rng: np.random.Generator, feather: float
) -> np.ndarray:
    """A feathered elliptical mask around a layout region, jittered a little as a face tracker would be."""
    cx, cy, rx, ry = region
    cx, cy = (cx + rng.uniform(-0.01, 0.01)) * size, (cy + rng.uniform(-0.01, 0.01)) * size
    rx, ry = rx * size * rng.uniform(0.95, 1.05), ry * size * rng.uniform(0.95, 1.05)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    r = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
    width = feather * size / min(rx, ry)
    return np.clip((1 - r) / width + 0.5, 0, 1)


def _blend(frame: np.ndarray, replacement: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = frame.astype(np.float32) + (replacement - frame.astype(np.float32)) * mask[..., None]
    return np.clip(out, 0, 255).round().astype(np.uint8)


def faceswap(target: np.ndarray, donor: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Paste the donor's inner face with a feathered ellipse and partial colour correction, as face swappers do."""
    size = target.shape[0]
    mask = _soft_ellipse(size, _INNER_FACE, rng, feather=rng.uniform(0.03, 0.06))
    align = cv2.getRotationMatrix2D((size / 2, size / 2), rng.uniform(-2, 2), rng.uniform(0.97, 1.03))
    align[:, 2] += rng.uniform(-0.01, 0.01, 2) * size
    source = cv2.warpAffine(donor, align, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    source = source.astype(np.float32)
    # colour correction moves the donor's mean toward the target's, leaving `mismatch` of the difference
    weights = mask[..., None] / mask.sum()
    target_mean = (target.astype(np.float32) * weights).sum(axis=(0, 1))
    source_mean = (source * weights).sum(axis=(0, 1))
    mismatch = min(1.0, 0.6 * strength)
    source += (target_mean - source_mean) * (1 - mismatch)
    # the donor video's illumination, which mean matching misses: brighter or darker, warmer or cooler
    gain = 1 + rng.choice([-1.0, 1.0]) * rng.uniform(0.06, 0.12) * strength
    warmth = rng.choice([-1.0, 1.0]) * rng.uniform(4, 10) * strength
    source = source * gain + np.array([warmth, 0.0, -warmth], np.float32)
    source = cv2.GaussianBlur(source, (0, 0), 0.5 + 0.7 * strength)  # the generator's smoother output
    return _blend(target, source, mask)


def expression(frame: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Move the mouth, the eyes or both with a smooth displacement field, resampled as reenactment does."""
    size = frame.shape[0]
    choice = rng.integers(3)
    regions = [_MOUTH, _EYES] if choice == 2 else [(_MOUTH, _EYES)[choice]]
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    dx, dy, mask = np.zeros_like(x), np.zeros_like(x), np.zeros_like(x)
    for region in regions:
        cx, cy, rx, ry = (v * size for v in region)
        u, v = (x - cx) / rx, (y - cy) / ry
        # flat-topped (the whole feature moves) and zero beyond 1.4 radii (the rest of the frame stays)
        t = np.clip((1.4 - np.sqrt(u**2 + v**2)) / 0.6, 0, 1)
        window = t * t * (3 - 2 * t)
        amount = 0.35 * ry * strength * rng.uniform(0.8, 1.2)  # stretches the feature by up to ~1.5x
        stretch_x, stretch_y = rng.uniform(-1, 1), rng.choice([-1.0, 1.0]) * rng.uniform(0.6, 1.0)
        lift = rng.uniform(-0.5, 0.5)
        dx += amount * window * stretch_x * u
        dy += amount * window * (stretch_y * v + lift * u**2)
        mask = np.maximum(mask, window)
    # reenactment renders the moved region through a coarser sampling grid before warping it back
    low = max(4, round(size / (1 + 2 * strength)))
    coarse = cv2.resize(frame, (low, low), interpolation=cv2.INTER_AREA)
    coarse = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    # ... and under the lighting it estimated, a little brighter or darker than the frame
    coarse *= 1 + rng.choice([-1.0, 1.0]) * rng.uniform(0.05, 0.09) * strength
    source = frame.astype(np.float32) + (coarse - frame.astype(np.float32)) * mask[..., None]
    warped = cv2.remap(source, x - dx, y - dy, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return _blend(frame, warped, mask)


def rerender(frame: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Replace the inner face by a render from a low-resolution texture (downsampled 4-8x, upsampled back)."""
    size = frame.shape[0]
    mask = _soft_ellipse(size, _INNER_FACE, rng, feather=rng.uniform(0.02, 0.05))
    factor = 1 + (rng.uniform(4, 8) - 1) * strength
    low = max(4, round(size / factor))
    texture = cv2.resize(frame, (low, low), interpolation=cv2.INTER_AREA)
    interpolation = cv2.INTER_LINEAR if rng.random() < 0.5 else cv2.INTER_CUBIC
    rendered = cv2.resize(texture, (size, size), interpolation=interpolation).astype(np.float32)
    rendered *= rng.uniform(1 - 0.04 * strength, 1 + 0.04 * strength)
    return _blend(frame, rendered, mask)


def _transposed_upsample(image: np.ndarray, overlap: float) -> np.ndarray:
    """x2 zero-insertion upsampling filtered by a 3-tap kernel [overlap, 1, overlap] (per axis).

    With overlap 0.5 this is exact bilinear interpolation; any other value weights even and odd output pixels
    differently, the checkerboard of a stride-2 transposed convolution whose kernel overlaps unevenly.
    """
    h, w = image.shape[:2]
    zeros = np.zeros((2 * h, 2 * w, image.shape[2]), np.float32)
    zeros[::2, ::2] = image
    kernel = np.array([overlap, 1.0, overlap], np.float32)
    kernel /= kernel.sum() / 2
    return cv2.sepFilter2D(zeros, -1, kernel, kernel, borderType=cv2.BORDER_REFLECT)


def upsample(frame: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Replace the face by a generator's output: its shapes without camera noise, plus an upsampling checkerboard.

    The generator works at a quarter of the crop size and upsamples twice, so the pattern's periods (2 and 4 px)
    survive the crop being resized to half its size. The checkerboard is (transposed - bilinear) upsampling of
    the low-resolution face, i.e. exactly what the uneven kernel overlap adds to a clean upsampling.
    """
    size = frame.shape[0]
    mask = _soft_ellipse(size, _FACE, rng, feather=0.04)
    overlap = max(0.0, 0.5 - 0.035 * strength * rng.uniform(0.8, 1.2))
    low_size = size // 4
    low = cv2.resize(frame, (low_size, low_size), interpolation=cv2.INTER_AREA).astype(np.float32)
    artefact, smooth = low, low
    for _ in range(2):
        artefact = _transposed_upsample(artefact, overlap)
        smooth = _transposed_upsample(smooth, 0.5)
    artefact = cv2.resize(artefact - smooth, (size, size), interpolation=cv2.INTER_NEAREST)
    clean = cv2.GaussianBlur(frame.astype(np.float32), (0, 0), 0.5 + 0.5 * strength)
    return _blend(frame, clean + artefact, mask)


MANIPULATIONS: dict[str, Callable[..., np.ndarray]] = {
    "faceswap": faceswap,  # (target, donor, rng, strength)
    "expression": expression,  # (frame, rng, strength), as the other two
    "rerender": rerender,
    "upsample": upsample,
}


def manipulate(
    frame: np.ndarray,
    method: str,
    rng: np.random.Generator,
    donor: np.ndarray | None = None,
    *,
    strength: float = 1.0,
) -> np.ndarray:
    """Forge one RGB uint8 face crop with `method`; faceswap needs a donor crop of the same size."""
    if method not in MANIPULATIONS:
        raise SyntheticError(f"unknown manipulation {method!r}; choose from {', '.join(METHODS)}")
    if frame.ndim != 3 or frame.shape[0] != frame.shape[1] or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise SyntheticError(f"frame of shape {frame.shape} and dtype {frame.dtype}: expected a square RGB uint8 crop")
    if method == "faceswap":
        if donor is None or donor.shape != frame.shape:
            raise SyntheticError("faceswap needs a donor crop of the same shape as the frame")
        return faceswap(frame, donor, rng, strength)
    return MANIPULATIONS[method](frame, rng, strength)


# ----------------------------------------------------------------------------------------------- benchmark


def _validate(config: SyntheticConfig) -> None:
    if config.identities < 1 or config.frames_per_video < 1:
        raise SyntheticError("identities and frames per video must be at least 1")
    if config.size < 32:
        raise SyntheticError(f"size {config.size}: faces need at least 32 px")
    unknown = [m for m in config.methods if m not in METHODS]
    if unknown or not config.methods:
        raise SyntheticError(f"methods {list(config.methods)}: choose one or more of {', '.join(METHODS)}")
    if config.jpeg_qualities is not None and (
        not config.jpeg_qualities or any(not 1 <= q <= 100 for q in config.jpeg_qualities)
    ):
        raise SyntheticError(f"JPEG qualities {config.jpeg_qualities}: each must be in 1..100")
    fractions = config.split_fractions
    if len(fractions) != 3 or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise SyntheticError(f"split fractions {fractions}: need three non-negative shares summing to 1")
    if config.strength <= 0:
        raise SyntheticError(f"strength {config.strength}: must be positive")


def _assign_splits(config: SyntheticConfig) -> list[str]:
    """Split of each identity, cut at the configured fractions so test faces are unseen in training.

    Identities are shuffled within each method's group and the groups interleaved before the cut, so every split
    holds the methods in near-equal numbers.
    """
    rng = np.random.default_rng([config.seed, 7])
    n_methods = len(config.methods)
    groups = [rng.permutation(np.arange(m, config.identities, n_methods)) for m in range(n_methods)]
    order = [int(g[k]) for k in range(len(groups[0])) for g in groups if k < len(g)]
    ends = np.round(np.cumsum(config.split_fractions) * config.identities).astype(int)
    splits = [""] * config.identities
    for rank, identity in enumerate(order):
        splits[identity] = SPLITS[int(np.searchsorted(ends, rank, side="right"))]
    return splits


def _stamp(config: SyntheticConfig, complete: bool) -> dict:
    return {
        "generator": "recce.data.synthetic",
        "config": json.loads(json.dumps(dataclasses.asdict(config))),
        "complete": complete,
    }


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _encode(image: np.ndarray, quality: int | None) -> bytes:
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if quality is None:
        ok, data = cv2.imencode(".png", bgr)
    else:
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise SyntheticError("OpenCV could not encode a synthetic frame")
    return data.tobytes()


def _check_folder(out: Path, config: SyntheticConfig) -> bool:
    """True when `out` already holds this benchmark complete; errors when it holds anything else."""
    stamp_path = out / STAMP_NAME
    if stamp_path.is_file():
        try:
            stamp = json.loads(stamp_path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise SyntheticError(f"{stamp_path}: unreadable benchmark stamp ({error})") from None
        if stamp.get("config") != _stamp(config, True)["config"]:
            raise SyntheticError(
                f"{out}: holds a synthetic benchmark made with other settings; use an empty folder or the same settings"
            )
        return bool(stamp.get("complete")) and (out / MANIFEST_NAME).is_file()
    if out.exists() and not out.is_dir():
        raise SyntheticError(f"{out}: not a folder")
    if out.exists() and any(out.iterdir()):
        raise SyntheticError(f"{out}: not empty and not a synthetic benchmark; use an empty or new folder")
    return False


def _identity_rows(identity: int, config: SyntheticConfig, splits: list[str], out: Path) -> list[dict]:
    """Render, forge, compress and save one identity's real and fake videos; the manifest rows of both."""
    split = splits[identity]
    frames, boxes = _render_video(identity, config.frames_per_video, config.size, config.seed)
    method = config.methods[identity % len(config.methods)]
    rng = np.random.default_rng([config.seed, identity, 2])
    donors: list[np.ndarray | None] = [None] * len(frames)
    if method == "faceswap":
        same_split = [i for i, s in enumerate(splits) if s == split and i != identity]
        # a lone identity borrows a face from beyond the benchmark's identities, so no split sees it twice
        donor = int(rng.choice(same_split)) if same_split else config.identities + identity
        donors = render_identity_frames(donor, config.frames_per_video, config.size, config.seed)
    manipulation_seed = rng.integers(2**63)
    qualities = [None, None] if config.jpeg_qualities is None else list(rng.choice(config.jpeg_qualities, 2))
    rows = []
    for kind, quality in zip(("real", method), qualities, strict=True):
        video = f"id{identity:04d}_{kind}"
        folder = out / "crops" / split / video
        folder.mkdir(parents=True, exist_ok=True)
        for index, (frame, box) in enumerate(zip(frames, boxes, strict=True)):
            if kind != "real":
                # one seed per video: the forgery's parameters hold steady over its frames, as a tool's would
                frame = manipulate(
                    frame,
                    kind,
                    np.random.default_rng(manipulation_seed),
                    donors[index],
                    strength=config.strength,
                )
            suffix = "png" if quality is None else "jpg"
            path = folder / f"{index:04d}.{suffix}"
            _write_atomic(path, _encode(frame, None if quality is None else int(quality)))
            rows.append(
                {
                    "path": path.relative_to(out).as_posix(),
                    "dataset": "synthetic",
                    "split": split,
                    "video": video,
                    "frame": index,
                    "label": int(kind != "real"),
                    "method": kind,
                    "compression": "png" if quality is None else f"q{int(quality)}",
                    "x1": box[0],
                    "y1": box[1],
                    "x2": box[2],
                    "y2": box[3],
                    "score": 1.0,
                    "detector": "synthetic",
                }
            )
    return rows


def generate(out: str | os.PathLike, config: SyntheticConfig = SyntheticConfig(), progress: bool = True) -> Path:
    """Write the benchmark's crops and manifest under `out`; the manifest's path. A complete one is reused."""
    _validate(config)
    out = Path(out)
    manifest_path = out / MANIFEST_NAME
    if _check_folder(out, config):
        return manifest_path
    out.mkdir(parents=True, exist_ok=True)
    stamp_path = out / STAMP_NAME
    _write_atomic(stamp_path, json.dumps(_stamp(config, False), indent=1).encode())
    splits = _assign_splits(config)
    rows = []
    for identity in tqdm(range(config.identities), desc="synthetic faces", unit="id", disable=not progress):
        rows.extend(_identity_rows(identity, config, splits, out))
    frame = pd.DataFrame(rows).sort_values(["split", "video", "frame"], kind="stable")
    manifest.write(frame, manifest_path)
    _write_atomic(stamp_path, json.dumps(_stamp(config, True), indent=1).encode())
    return manifest_path
