"""RetinaFace: golden-vector agreement, checkpoint compatibility, decoding and detection."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from conftest import REFERENCE_DIR
from skimage import data as skdata

from recce.data.faces import (
    CheckpointError,
    FaceDetector,
    RetinaFace,
    RetinaFaceDetector,
    build_detector,
    decode_boxes,
    decode_landmarks,
    load_retinaface,
    postprocess,
    prior_boxes,
)
from recce.data.faces.retinaface import pixel_inclusive

REFERENCE = REFERENCE_DIR
GOLDEN = REFERENCE / "retinaface_mobilenet0.25_golden.safetensors"
needs_reference = pytest.mark.skipif(
    not REFERENCE.is_dir(), reason=f"golden reference folder {REFERENCE} is absent (it sits beside the repo)"
)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


def reference_keys(variant: str) -> list[tuple[str, list[int]]]:
    lines = (REFERENCE / f"retinaface_{variant}_state_dict_keys.txt").read_text().splitlines()
    rows = [line.split("\t") for line in lines if line and not line.startswith("#")]
    return [(key, [int(d) for d in shape.strip("[]").split(",") if d.strip()]) for key, shape in rows]


def random_state_dict(variant: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A RetinaFace state dict with random (but not default-initialised) weights and BatchNorm statistics."""
    torch.manual_seed(seed)
    model = RetinaFace(variant)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 1.5)
            elif tensor.is_floating_point():
                tensor.normal_(0.0, 0.1)
    return {f"module.{key}": value for key, value in model.state_dict().items()}


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    if not GOLDEN.is_file():
        pytest.skip(f"golden file {GOLDEN} is absent (../shared beside the repo)")
    from safetensors.torch import load_file

    return load_file(GOLDEN)


@pytest.fixture(scope="module")
def mobilenet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "mobilenet0.25_Final.pth"
    torch.save(random_state_dict("mobilenet0.25"), path)
    return path


def golden_weights(golden: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {
        key.removeprefix("state_dict."): value.float() if value.is_floating_point() else value
        for key, value in golden.items()
        if key.startswith("state_dict.")
    }


@needs_reference
def test_mobilenet_matches_the_reference_outputs(golden: dict[str, torch.Tensor]) -> None:
    weights = golden_weights(golden)
    assert all(key.startswith("module.") for key in weights)
    model = load_retinaface(weights, device="cpu")
    assert model.variant == "mobilenet0.25" and not model.training
    image = golden["input_bgr_minus_mean"]
    with torch.inference_mode():
        loc, conf, landm = model(image)
    torch.testing.assert_close(loc, golden["loc"], rtol=0, atol=1e-4)
    torch.testing.assert_close(conf.softmax(-1), golden["conf_softmax"], rtol=0, atol=1e-4)
    torch.testing.assert_close(landm, golden["landm"], rtol=0, atol=1e-4)
    height, width = image.shape[-2:]
    torch.testing.assert_close(prior_boxes(height, width), golden["priors_cxcywh_normalised"], rtol=0, atol=1e-6)


@needs_reference
@pytest.mark.parametrize("variant", ["mobilenet0.25", "resnet50"])
def test_state_dict_keys_and_shapes_equal_the_public_checkpoints(variant: str) -> None:
    got = [(key, list(value.shape)) for key, value in RetinaFace(variant).state_dict().items()]
    assert got == reference_keys(variant)


def test_resnet50_checkpoint_loads_and_runs() -> None:
    weights = random_state_dict("resnet50")
    model = load_retinaface(weights, device="cpu")
    assert model.variant == "resnet50"
    for key, value in model.state_dict().items():
        assert torch.equal(value, weights[f"module.{key}"]), key
    with torch.inference_mode():
        loc, conf, landm = model(torch.randn(1, 3, 64, 96))
    priors = prior_boxes(64, 96).shape[0]
    assert loc.shape == (1, priors, 4) and conf.shape == (1, priors, 2) and landm.shape == (1, priors, 10)


def test_priors_follow_the_anchor_layout() -> None:
    priors = prior_boxes(100, 60)
    cells = [math.ceil(100 / s) * math.ceil(60 / s) for s in (8, 16, 32)]
    assert priors.shape == (2 * sum(cells), 4)
    torch.testing.assert_close(priors[0], torch.tensor([4 / 60, 4 / 100, 16 / 60, 16 / 100]))
    torch.testing.assert_close(priors[1], torch.tensor([4 / 60, 4 / 100, 32 / 60, 32 / 100]))
    torch.testing.assert_close(priors[2], torch.tensor([12 / 60, 4 / 100, 16 / 60, 16 / 100]))  # next column
    first_level_32 = 2 * cells[0]
    torch.testing.assert_close(priors[first_level_32], torch.tensor([8 / 60, 8 / 100, 64 / 60, 64 / 100]))


def test_decoding_recovers_a_hand_encoded_box_and_landmarks() -> None:
    prior = torch.tensor([[0.50, 0.40, 0.20, 0.30]])  # cx, cy, w, h
    box = torch.tensor([0.42, 0.30, 0.66, 0.48])  # x1, y1, x2, y2: centre (0.54, 0.39), size (0.24, 0.18)
    loc = torch.tensor(
        [
            [
                (0.54 - 0.50) / (0.1 * 0.20),
                (0.39 - 0.40) / (0.1 * 0.30),
                math.log(0.24 / 0.20) / 0.2,
                math.log(0.18 / 0.30) / 0.2,
            ]
        ]
    )
    torch.testing.assert_close(decode_boxes(loc, prior)[0], box)
    points = torch.tensor([[0.45, 0.35], [0.60, 0.36], [0.52, 0.42], [0.47, 0.46], [0.58, 0.47]])
    offsets = (points - prior[:, :2]) / (0.1 * prior[:, 2:])
    torch.testing.assert_close(decode_landmarks(offsets.reshape(1, 10), prior)[0], points.reshape(10))
    batched = decode_boxes(loc.expand(3, 1, 4), prior)
    assert batched.shape == (3, 1, 4)


def encode(box: tuple[float, ...], prior: torch.Tensor, frame_hw: tuple[int, int]) -> tuple[list, list]:
    """Regression targets for a pixel box and its 5 landmarks (here the box's corners and centre), by hand."""
    height, width = frame_hw
    pcx, pcy, pw, ph = prior.tolist()
    x1, y1, x2, y2 = box[0] / width, box[1] / height, box[2] / width, box[3] / height
    loc = [
        ((x1 + x2) / 2 - pcx) / (0.1 * pw),
        ((y1 + y2) / 2 - pcy) / (0.1 * ph),
        math.log((x2 - x1) / pw) / 0.2,
        math.log((y2 - y1) / ph) / 0.2,
    ]
    points = [(x1, y1), (x2, y1), ((x1 + x2) / 2, (y1 + y2) / 2), (x1, y2), (x2, y2)]
    landm = [v for x, y in points for v in ((x - pcx) / (0.1 * pw), (y - pcy) / (0.1 * ph))]
    return loc, landm


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_postprocess_keeps_the_right_faces(device: str) -> None:
    frame_hw = (64, 96)
    priors = prior_boxes(*frame_hw)
    loc = torch.zeros(2, len(priors), 4)
    landm = torch.zeros(2, len(priors), 10)
    conf = torch.zeros(2, len(priors), 2)
    conf[..., 1] = -6.0  # background: face probability 0.0025, under the 0.02 prefilter
    planted = {  # (image, prior): (box in pixels, score)
        (0, 5): ((10.0, 8.0, 50.0, 52.0), 0.95),
        (0, 100): ((12.0, 10.0, 52.0, 50.0), 0.85),  # IoU 0.83 with the first: suppressed by NMS
        (0, 200): ((60.0, 20.0, 90.0, 60.0), 0.90),
        (0, 250): ((30.0, 40.0, 45.0, 60.0), 0.50),  # IoU 0.1 with the first; under a 0.6 threshold
        (1, 5): ((10.0, 8.0, 50.0, 52.0), 0.70),  # same place, other image: NMS must not compare them
    }
    for (image, prior), (box, score) in planted.items():
        box_loc, box_landm = encode(box, priors[prior], frame_hw)
        loc[image, prior] = torch.tensor(box_loc)
        landm[image, prior] = torch.tensor(box_landm)
        conf[image, prior, 1] = math.log(score / (1 - score))
    on = [t.to(device) for t in (loc, conf, landm, priors)]

    for threshold, expected in ((0.6, [[5, 200], [5]]), (0.3, [[5, 200, 250], [5]])):
        faces = postprocess(*on, frame_hw, score_threshold=threshold)
        assert [len(f) for f in faces] == [len(e) for e in expected]
        for image, (got, prior_ids) in enumerate(zip(faces, expected, strict=True)):
            for face, prior in zip(got, prior_ids, strict=True):
                box, score = planted[image, prior]
                np.testing.assert_allclose(face.box, box, atol=1e-3)
                assert face.score == pytest.approx(score, abs=1e-6)
                x1, y1, x2, y2 = box
                corners_and_centre = [(x1, y1), (x2, y1), ((x1 + x2) / 2, (y1 + y2) / 2), (x1, y2), (x2, y2)]
                np.testing.assert_allclose(face.landmarks, corners_and_centre, atol=1e-3)


def reference_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """biubug6's `py_cpu_nms` restated: widths count both end pixels (+1); keep overlaps <= threshold."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = list(np.argsort(-scores, kind="stable"))
    keep = []
    while order:
        i, rest = order[0], np.array(order[1:], dtype=int)
        keep.append(int(i))
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        overlap = w * h / (areas[i] + areas[rest] - w * h)
        order = [int(j) for j in rest[overlap <= threshold]]
    return keep


def test_nms_matches_the_reference_on_small_faces() -> None:
    frame_hw = (64, 96)
    priors = prior_boxes(*frame_hw)
    rng = np.random.default_rng(3)
    # Two 10-px boxes whose plain IoU is 0.385 (both kept by plain NMS) but whose inclusive overlap is 0.43
    # (the reference suppresses the second), then a crowd of small random boxes.
    boxes = [(10.0, 10.0, 19.0, 19.0), (14.0, 10.0, 23.0, 19.0)]
    for _ in range(38):
        x, y = rng.uniform(2, 80), rng.uniform(2, 48)
        w, h = rng.uniform(4, 14, size=2)
        boxes.append((x, y, x + w, y + h))
    boxes = np.array(boxes)
    scores = np.concatenate([[0.95, 0.9], rng.uniform(0.61, 0.89, size=len(boxes) - 2)])
    loc = torch.zeros(1, len(priors), 4)
    landm = torch.zeros(1, len(priors), 10)
    conf = torch.zeros(1, len(priors), 2)
    conf[..., 1] = -6.0
    chosen = rng.choice(len(priors), size=len(boxes), replace=False)
    for prior, box, score in zip(chosen, boxes, scores, strict=True):
        box_loc, box_landm = encode(tuple(box), priors[prior], frame_hw)
        loc[0, prior], landm[0, prior] = torch.tensor(box_loc), torch.tensor(box_landm)
        conf[0, prior, 1] = math.log(score / (1 - score))
    faces = postprocess(loc, conf, landm, priors, frame_hw, score_threshold=0.6)[0]
    expected = reference_nms(boxes, scores, 0.4)
    assert 1 not in expected  # the planted pair: the reference keeps only the more confident box
    got = np.array([face.box for face in faces])
    np.testing.assert_allclose(got, boxes[expected], atol=1e-3)
    assert [face.score for face in faces] == pytest.approx(list(scores[expected]), abs=1e-6)


def test_bad_checkpoint_files_give_one_line_naming_the_file(tmp_path: Path, mobilenet_file: Path) -> None:
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(mobilenet_file.read_bytes()[: mobilenet_file.stat().st_size // 2])
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    foreign = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), foreign)
    partial = tmp_path / "partial.pth"
    weights = random_state_dict("mobilenet0.25")
    del weights["module.ssh1.conv3X3.0.weight"]
    weights["module.extra.weight"] = torch.zeros(1)
    torch.save(weights, partial)
    cases = {
        truncated: "truncated or corrupt",
        text: "not a PyTorch checkpoint",
        foreign: "not a RetinaFace state dict",
        partial: "1 missing keys .*ssh1.conv3X3.0.weight.*1 unexpected keys .*extra.weight",
        tmp_path / "absent.pth": "file not found",
    }
    for path, problem in cases.items():
        with pytest.raises(CheckpointError, match=problem) as caught:
            load_retinaface(path)
        message = str(caught.value)
        assert message.startswith(str(path)) and "\n" not in message


def test_detector_runs_end_to_end_and_batches_consistently(mobilenet_file: Path) -> None:
    model = load_retinaface(mobilenet_file, device="cpu")
    detector = RetinaFaceDetector(model, score_threshold=0.3, batch_size=2)
    assert isinstance(detector, FaceDetector) and detector.name == "retinaface-mobilenet0.25"
    photo = np.ascontiguousarray(skdata.astronaut()[::4, ::4])  # 128 x 128
    flipped = np.ascontiguousarray(photo[:, ::-1])
    other = np.ascontiguousarray(photo[:96])  # another size, so a batch of its own
    # The 128 x 128 frames go in two batches of two, (photo, flipped) each time: results must come back in
    # frame order and equal those of the same batch run alone. (Random weights give hundreds of near-tied
    # boxes, so only identically composed batches are bit-for-bit comparable.)
    results = detector.detect([photo, other, flipped, photo, flipped])
    assert len(results) == 5 and all(results)
    alone = detector.detect([photo, flipped])
    assert results[0] == results[3] == alone[0]
    assert results[2] == results[4] == alone[1]
    assert results[1] == detector.detect([other])[0]
    assert results[0] != results[2]
    for faces in results:
        scores = [face.score for face in faces]
        assert scores == sorted(scores, reverse=True) and all(s >= 0.3 for s in scores)
        assert len(faces) <= 750 and all(len(face.landmarks) == 5 for face in faces)
        boxes = pixel_inclusive(torch.tensor([face.box for face in faces]))
        overlaps = torchvision.ops.box_iou(boxes, boxes).fill_diagonal_(0)
        assert overlaps.max() <= 0.4 + 1e-6  # what NMS at IoU 0.4 (inclusive pixel widths) guarantees
    # Thresholding before NMS must give what the reference's threshold-after-NMS gives.
    loose = RetinaFaceDetector(model, score_threshold=0.02, batch_size=2).detect([photo, flipped])[0]
    assert results[0] == [face for face in loose if face.score >= 0.3]
    # At most 750 faces per frame (not per batch): random weights leave well over 750 boxes per 256 x 256 frame.
    large = np.ascontiguousarray(skdata.astronaut()[::2, ::2])
    capped = RetinaFaceDetector(model, score_threshold=0.02).detect([large, large[::-1].copy()])
    assert [len(faces) for faces in capped] == [750, 750]


def test_build_detector_for_retinaface(monkeypatch: pytest.MonkeyPatch, mobilenet_file: Path, tmp_path: Path) -> None:
    monkeypatch.delenv("RECCE_RETINAFACE_WEIGHTS", raising=False)
    with pytest.raises(ValueError, match="RECCE_RETINAFACE_WEIGHTS"):
        build_detector("retinaface")
    assert build_detector("auto", weights=mobilenet_file, device="cpu").name == "retinaface-mobilenet0.25"
    with pytest.raises(ValueError, match="retinaface-resnet50 was asked for"):
        build_detector("retinaface-resnet50", weights=mobilenet_file, device="cpu")
    monkeypatch.setenv("RECCE_RETINAFACE_WEIGHTS", str(mobilenet_file))
    detector = build_detector(device="cpu", score_threshold=0.9, batch_size=4)
    assert detector.name == "retinaface-mobilenet0.25"
    assert detector.score_threshold == 0.9 and detector.batch_size == 4
    with pytest.raises(CheckpointError, match="not found"):
        build_detector("retinaface", weights=tmp_path / "missing.pth", device="cpu")


@needs_cuda
def test_cuda_network_matches_cpu_and_detects() -> None:
    weights = random_state_dict("mobilenet0.25")
    cpu = RetinaFaceDetector(load_retinaface(weights, device="cpu"))
    gpu = RetinaFaceDetector(load_retinaface(weights, device="cuda"), score_threshold=0.02, batch_size=2)
    assert gpu.device.type == "cuda"
    frame = skdata.astronaut()[:480]
    with torch.inference_mode():
        expected, got = cpu.model(cpu._upload([frame])), gpu.model(gpu._upload([frame]))
    for want, have in zip(expected, got, strict=True):
        torch.testing.assert_close(have.cpu(), want, rtol=0, atol=2e-3)  # cuDNN may use TF32
    results = gpu.detect([frame, frame[:240].copy(), frame, frame])
    assert len(results) == 4 and all(0 < len(faces) <= 750 for faces in results)
