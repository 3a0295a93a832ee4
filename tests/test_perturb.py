"""Each perturbation does what the DeeperForensics-1.0 definition (spec/perturbations.md) says."""

from __future__ import annotations

import io

import av
import cv2
import numpy as np
import pytest
from media import moving_face_frames
from skimage import data

from recce.data import perturb as P
from recce.data.faces import crop_face
from recce.data.perturb import PERTURBATIONS, Perturbation, perturb, stable_seed

LEVELS = (1, 2, 3, 4, 5)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()


@pytest.fixture(scope="module")
def face(astronaut: np.ndarray) -> np.ndarray:
    """An odd-sized face crop, so codecs needing even sides are exercised too."""
    return astronaut[10:171, 130:293].copy()


def mean_abs_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.mark.parametrize("kind", list(PERTURBATIONS))
def test_every_level_keeps_shape_dtype_and_changes_the_image(kind: str, face: np.ndarray) -> None:
    for level in LEVELS:
        out = perturb(face, kind, level, seed=3)
        assert out.shape == face.shape and out.dtype == np.uint8
        if kind != "block":  # a 161 px crop gets no blocks, tested below
            assert not np.array_equal(out, face), (kind, level)


def test_contrast_is_truncated_multiplication(face: np.ndarray) -> None:
    np.testing.assert_array_equal(perturb(face, "contrast", 1), np.uint8(face * 0.85))
    every_value = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    for level, factor in zip(LEVELS, PERTURBATIONS["contrast"], strict=True):
        expected = (every_value.astype(np.float32) * factor).astype(np.uint8)
        np.testing.assert_array_equal(perturb(every_value, "CC", level), expected)


def test_saturation_level5_is_grey_and_factor_one_is_identity_up_to_truncation(face: np.ndarray) -> None:
    grey = perturb(face, "saturation", 5).astype(np.int16)
    assert np.abs(grey - grey[:, :, :1]).max() <= 1
    luma = cv2.cvtColor(face, cv2.COLOR_RGB2GRAY).astype(np.int16)
    assert np.abs(grey[:, :, 1] - luma).max() <= 1
    unchanged = P._saturation(face, 1.0, np.random.default_rng(0)).astype(np.int16)
    assert set(np.unique(face - unchanged)) <= {0, 1}  # DF's float32 round trip then truncation
    assert (face == unchanged).mean() > 0.8


def test_saturation_shrinks_chroma_by_the_factor(face: np.ndarray) -> None:
    chroma = cv2.cvtColor(face, cv2.COLOR_RGB2YCrCb)[:, :, 1:].astype(np.float64) - 128
    for level, factor in zip(LEVELS[:4], PERTURBATIONS["saturation"], strict=False):
        out_chroma = cv2.cvtColor(perturb(face, "saturation", level), cv2.COLOR_RGB2YCrCb)[:, :, 1:] - 128.0
        ratio = np.abs(out_chroma).mean() / np.abs(chroma).mean()
        assert ratio == pytest.approx(factor, abs=0.03), level


@pytest.mark.parametrize("level", LEVELS)
def test_blur_is_opencv_gaussian_with_sigma_k_over_6(level: int, face: np.ndarray) -> None:
    k = PERTURBATIONS["blur"][level - 1]
    np.testing.assert_array_equal(perturb(face, "blur", level), cv2.GaussianBlur(face, (k, k), k / 6))
    assert k in (7, 9, 13, 17, 21)


@pytest.mark.parametrize("level", LEVELS)
def test_pixelation_is_bilinear_down_and_up_and_df_jpeg_is_an_alias(level: int, face: np.ndarray) -> None:
    f = level + 1
    height, width = face.shape[:2]
    small = cv2.resize(face, (width // f, height // f), interpolation=cv2.INTER_LINEAR)
    expected = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(perturb(face, "pixelation", level), expected)
    np.testing.assert_array_equal(perturb(face, "JPEG", level), expected)


@pytest.mark.parametrize("level", LEVELS)
def test_nearest_pixelation_paints_each_block_with_its_mean(level: int, astronaut: np.ndarray) -> None:
    f = level + 1
    crop = astronaut[: 30 * f, : 30 * f]
    out = perturb(crop, "pixelation_nearest", level)
    block_means = crop.reshape(30, f, 30, f, 3).mean(axis=(1, 3))
    blocks = out.reshape(30, f, 30, f, 3)
    assert (blocks == blocks[:, :1, :, :1]).all()
    assert np.abs(blocks[:, 0, :, 0] - block_means).max() <= 0.5 + 1e-6


def test_block_count_and_grey_on_a_512_px_image() -> None:
    black = np.zeros((512, 8192, 3), np.uint8)  # long, so random 8x8 squares practically never touch
    for level in LEVELS:
        out = perturb(black, "block", level, seed=11)
        painted = out.any(axis=2)
        assert set(np.unique(out[painted])) == {128}
        n_blocks = 2 * PERTURBATIONS["block"][level - 1]  # min(H, W) // 256 == 2
        n_parts, _, stats, _ = cv2.connectedComponentsWithStats(painted.astype(np.uint8), connectivity=4)
        sizes = stats[1:, cv2.CC_STAT_AREA]
        assert painted.sum() <= n_blocks * 64
        if level <= 2:  # exact count where this seed leaves every square apart
            assert n_parts - 1 == n_blocks and (sizes == 64).all()
        else:  # twice the 256 px count in any case
            assert painted.sum() > n_blocks // 2 * 64


def test_block_gets_nothing_under_256_px(astronaut: np.ndarray) -> None:
    small = astronaut[:255, :300]
    for level in LEVELS:
        np.testing.assert_array_equal(perturb(small, "block", level, seed=5), small)


def test_block_draws_positions_from_the_seed(astronaut: np.ndarray) -> None:
    crop = astronaut[:300, :300]
    first = perturb(crop, "BW", 3, seed=1)
    np.testing.assert_array_equal(first, perturb(crop, "block", 3, seed=1))
    assert not np.array_equal(first, perturb(crop, "block", 3, seed=2))
    np.testing.assert_array_equal(crop, astronaut[:300, :300])  # the input is not painted in place


SPEC_RGB_STD = {  # spec note 2: per RGB channel on mid-grey, before clipping
    1: (16.0, 11.9, 18.8),
    2: (22.6, 16.8, 26.6),
    3: (35.5, 26.6, 42.0),
    4: (50.5, 37.6, 59.3),
}
SPEC_LUMA_STD = {1: 9.4, 2: 13.3, 3: 21.0}


def test_noise_std_matches_the_spec_and_clips() -> None:
    mid_grey = np.full((256, 256, 3), 128, np.uint8)
    previous = 0.0
    for level in LEVELS:
        out = perturb(mid_grey, "noise", level, seed=level).astype(np.float64)
        stds = out.reshape(-1, 3).std(axis=0)
        if level in SPEC_RGB_STD:
            np.testing.assert_allclose(stds, SPEC_RGB_STD[level], rtol=0.05)
        if level in SPEC_LUMA_STD:
            luma = out @ np.array([0.299, 0.587, 0.114])
            assert luma.std() == pytest.approx(SPEC_LUMA_STD[level], rel=0.05)
        assert stds.mean() > previous
        previous = stds.mean()
    clipped = perturb(mid_grey, "GNC", 5, seed=0)
    assert clipped.min() == 0 and clipped.max() == 255
    assert clipped.reshape(-1, 3).std(axis=0)[2] < 132.7  # level 5 is heavily clipped


def test_noise_is_deterministic_per_seed(face: np.ndarray) -> None:
    np.testing.assert_array_equal(perturb(face, "noise", 2, seed=7), perturb(face, "noise", 2, seed=7))
    assert not np.array_equal(perturb(face, "noise", 2, seed=7), perturb(face, "noise", 2, seed=8))


def test_jpeg_quality_sweep_is_opencv_jpeg_with_monotone_error(face: np.ndarray) -> None:
    bgr = cv2.cvtColor(face, cv2.COLOR_RGB2BGR)
    _, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
    expected = cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(perturb(face, "jpeg", 1), expected)
    errors = [mean_abs_error(perturb(face, "jpeg", level), face) for level in LEVELS]
    assert errors == sorted(errors) and len(set(errors)) == 5


def test_compression_error_grows_with_crf_and_is_repeatable(face: np.ndarray) -> None:
    outputs = [perturb(face, "compression", level) for level in LEVELS]
    errors = [mean_abs_error(out, face) for out in outputs]
    assert errors == sorted(errors) and len(set(errors)) == 5
    assert 1.0 < errors[0] < 15.0  # a CRF 30 frame still looks like the face
    np.testing.assert_array_equal(perturb(face, "VC", 1), outputs[0])


def test_stable_seed_is_deterministic_and_distinguishes_parts() -> None:
    seed = stable_seed("crops/000/0001.png", "noise", 3)
    assert seed == stable_seed("crops/000/0001.png", "noise", 3)
    assert 0 <= seed < 2**63
    others = {
        stable_seed("crops/000/0001.png", "noise", 4),
        stable_seed("crops/000/0002.png", "noise", 3),
        stable_seed("crops/000/0001.png", "noise", "3"),
        stable_seed("crops/000/0001.pngnoise", 3),
    }
    assert seed not in others and len(others) == 4


def test_perturbation_transform_and_bad_input(face: np.ndarray) -> None:
    transform = Perturbation("GNC", 2)
    assert transform.kind == "noise" and "noise" in repr(transform)
    np.testing.assert_array_equal(transform(face, 9), perturb(face, "noise", 2, seed=9))
    with pytest.raises(ValueError, match="allowed: saturation.*JPEG"):
        perturb(face, "sharpen", 1)
    with pytest.raises(ValueError, match="allowed: 1, 2, 3, 4, 5"):
        Perturbation("blur", 6)
    with pytest.raises(ValueError, match="RGB uint8"):
        perturb(face.astype(np.float32), "blur", 1)
    with pytest.raises(ValueError, match="too small"):
        perturb(face[:4, :4], "pixelation", 5)
    with pytest.raises(ValueError, match="non-negative"):
        perturb(face, "noise", 1, seed=-1)


def test_table5_columns_are_the_spec_df_types() -> None:
    df_code_of = {name: code for code, name in P.DF_CODES.items()}
    assert [df_code_of[kind] for kind in P.SEED_TABLE5] == ["VC", "GB", "CC", "CS", "JPEG"]


def _psnr(frames: list[np.ndarray], outputs: list[np.ndarray]) -> float:
    errors = [np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2) for a, b in zip(frames, outputs, strict=True)]
    return float(np.mean([10 * np.log10(255.0**2 / e) for e in errors]))


def _deeperforensics_encode(frames: list[np.ndarray], crf: int) -> list[np.ndarray]:
    """DF's `ffmpeg -i in -crf X out.mp4`: an mp4 through libx264 with every other setting at its default."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        stream.options = {"crf": str(crf)}
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    buffer.seek(0)
    with av.open(buffer) as container:
        return [frame.to_ndarray(format="rgb24").copy() for frame in container.decode(video=0)]


def test_video_compression_has_the_deeperforensics_severity() -> None:
    frames, boxes = moving_face_frames(24, size=(240, 180), face_width=60)
    crops = [crop_face(frame, box, 1.3, 96) for frame, box in zip(frames, boxes, strict=True)]
    for level, crf in zip(LEVELS, PERTURBATIONS["compression"], strict=True):
        reference = _psnr(crops, _deeperforensics_encode(crops, crf))
        ours = _psnr(crops, P.perturb_sequence(crops, "VC", level))
        assert abs(ours - reference) < 0.3, (level, ours, reference)
        # Encoding each crop alone (a one-frame stream) is far harsher: what a per-image perturbation would do.
        alone = _psnr(crops, [perturb(crop, "compression", level) for crop in crops])
        assert alone < reference - 1.5, (level, alone, reference)
    assert P.perturb_sequence(crops[:3], "compression", 2)[1].shape == crops[1].shape
    with pytest.raises(ValueError, match="applied per image"):
        P.perturb_sequence(crops, "blur", 1)
