"""Haar detection on real photos, the face-choice policies, detector selection and crop geometry."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest
from matplotlib import cbook
from skimage import data as skdata

from recce.data.faces import (
    Face,
    FaceDetector,
    HaarDetector,
    build_detector,
    choose_face,
    crop_box,
    crop_face,
)

# Hand-marked face extents (hairline to chin, ear to ear) in the two sample photos.
ASTRONAUT_FACE = (175.0, 60.0, 270.0, 170.0)
GRACE_HOPPER_FACE = (165.0, 140.0, 360.0, 330.0)


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def grace_hopper() -> np.ndarray:
    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        encoded = np.frombuffer(handle.read(), dtype=np.uint8)
    return cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def test_haar_finds_the_faces_in_real_photos(grace_hopper: np.ndarray) -> None:
    detector = build_detector("haar")
    assert isinstance(detector, FaceDetector) and detector.name == "haar"
    astronaut_faces, grace_faces = detector.detect([skdata.astronaut(), grace_hopper])
    for faces, truth in ((astronaut_faces, ASTRONAUT_FACE), (grace_faces, GRACE_HOPPER_FACE)):
        assert faces, "no face found"
        best = choose_face(faces)
        assert iou(best.box, truth) > 0.5
        assert 0.6 <= best.score <= 1.0 and best.landmarks is None
        assert [f.score for f in faces] == sorted((f.score for f in faces), reverse=True)


def test_haar_finds_nothing_in_noise_and_checks_input() -> None:
    noise = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    assert HaarDetector().detect([noise]) == [[]]
    with pytest.raises(ValueError, match="RGB uint8 HxWx3"):
        HaarDetector().detect([noise.astype(np.float32)])


def test_haar_score_threshold_drops_faces() -> None:
    assert HaarDetector(score_threshold=1.0).detect([skdata.astronaut()]) == [[]]


def test_auto_without_weights_is_haar_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("RECCE_RETINAFACE_WEIGHTS", raising=False)
    with caplog.at_level(logging.INFO, logger="recce"):
        assert build_detector("auto").name == "haar"
    assert "haar" in caplog.text
    with pytest.raises(ValueError, match="unknown face detector"):
        build_detector("mtcnn")


def test_choose_face_policies() -> None:
    confident_small = Face(box=(0, 0, 10, 10), score=0.99)
    doubtful_large = Face(box=(0, 0, 50, 40), score=0.7)
    faces = [doubtful_large, confident_small]
    assert choose_face(faces) is confident_small
    assert choose_face(faces, policy="largest") is doubtful_large
    assert choose_face(faces, policy="largest", min_score=0.8) is confident_small
    assert choose_face(faces, min_score=0.995) is None
    assert choose_face([]) is None
    with pytest.raises(ValueError, match="unknown face policy"):
        choose_face(faces, policy="first")


def test_crop_box_is_an_enlarged_square_around_the_centre() -> None:
    box = (10.0, 20.0, 50.0, 40.0)  # 40 wide, 20 high, centre (30, 30)
    x1, y1, x2, y2 = crop_box(box, (100, 100), scale=1.3)
    assert x2 - x1 == y2 - y1 == round(1.3 * 40)
    assert abs((x1 + x2) / 2 - 30) <= 0.5 and abs((y1 + y2) / 2 - 30) <= 0.5
    assert crop_box((0.0, 0.0, 20.0, 20.0), (100, 100), scale=1.5) == (0, 0, 25, 25)
    with pytest.raises(ValueError, match="outside"):
        crop_box((200.0, 200.0, 220.0, 220.0), (100, 100))


def test_crop_inside_the_frame_is_the_exact_square() -> None:
    frame = np.random.default_rng(1).integers(0, 256, (100, 120, 3), dtype=np.uint8)
    box = (40.0, 30.0, 60.0, 50.0)  # square of side 30 at scale 1.5: (35, 25) to (65, 55)
    for edge in ("clip", "pad"):
        crop = crop_face(frame, box, scale=1.5, size=30, edge=edge)
        np.testing.assert_array_equal(crop, frame[25:55, 35:65])
        assert not np.shares_memory(crop, frame)


def test_crop_at_the_frame_edge_clip_versus_pad() -> None:
    frame = np.random.default_rng(2).integers(1, 256, (100, 120, 3), dtype=np.uint8)  # no black pixel
    box = (0.0, 0.0, 20.0, 20.0)  # square of side 30 at scale 1.5: (-5, -5) to (25, 25)

    padded = crop_face(frame, box, scale=1.5, size=30, edge="pad")
    assert padded.shape == (30, 30, 3)
    assert not padded[:5].any() and not padded[:, :5].any()
    np.testing.assert_array_equal(padded[5:, 5:], frame[:25, :25])

    clipped = crop_face(frame, box, scale=1.5, size=30, edge="clip")
    np.testing.assert_array_equal(clipped, cv2.resize(frame[:25, :25], (30, 30), interpolation=cv2.INTER_LINEAR))
    assert clipped.all(), "clipping must not bring in black"

    # Past the right edge only: the clipped region is 25 wide and 30 high and gets stretched.
    right = crop_face(frame, (100.0, 40.0, 120.0, 60.0), scale=1.5, size=30, edge="clip")
    np.testing.assert_array_equal(right, cv2.resize(frame[35:65, 95:120], (30, 30), interpolation=cv2.INTER_LINEAR))
    right_padded = crop_face(frame, (100.0, 40.0, 120.0, 60.0), scale=1.5, size=30, edge="pad")
    np.testing.assert_array_equal(right_padded[:, :25], frame[35:65, 95:120])
    assert not right_padded[:, 25:].any()


def test_crop_output_size_and_bad_arguments() -> None:
    frame = np.full((600, 800, 3), (10, 120, 230), dtype=np.uint8)
    for box in ((100.0, 100.0, 500.0, 450.0), (380.0, 280.0, 420.0, 320.0)):  # shrinking and enlarging
        crop = crop_face(frame, box)
        assert crop.shape == (299, 299, 3) and crop.dtype == np.uint8
        assert (crop == np.array([10, 120, 230], dtype=np.uint8)).all()
    with pytest.raises(ValueError, match="edge mode"):
        crop_face(frame, (0.0, 0.0, 10.0, 10.0), edge="reflect")
    with pytest.raises(ValueError, match="no area"):
        crop_face(frame, (10.0, 10.0, 10.0, 30.0))
