"""Add-Net (ADDNet-2D): the face mask from landmarks, where it gates the network, and the landmarks' way from
extraction through the manifest to the dataset's 4th channel and to in-memory scoring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from media import face_patch, write_face_video

from recce.cli import main
from recce.data import manifest
from recce.data.dataset import ManifestDataset, to_tensor
from recce.data.extract import ExtractSettings, extract
from recce.data.faces.mask import CANONICAL_LANDMARKS, MaskShape, as_landmarks, render_mask
from recce.detectors import Preprocess, create_detector
from recce.detectors.addnet import AddNet
from recce.engine.config import ConfigError, load_config
from recce.engine.inference import score_images
from recce.engine.train import load_datasets

SIZE = 64
# A frontal layout in crop coordinates: eyes, nose, mouth corners (the 1.3x crop of a face box)
LAYOUT = np.array([[0.36, 0.42], [0.64, 0.42], [0.5, 0.56], [0.39, 0.68], [0.61, 0.68]], dtype=np.float32)
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "addnet"


def masked_input(batch: int, size: int = SIZE, layout: np.ndarray = LAYOUT) -> torch.Tensor:
    rgb = torch.randn(batch, 3, size, size)
    mask = torch.from_numpy(render_mask(layout, size)).expand(batch, 1, size, size)
    return torch.cat([rgb, mask], dim=1)


# --- the face mask ---


def test_mask_is_soft_in_unit_range_brighter_at_the_features_and_deterministic():
    mask = render_mask(LAYOUT, 128)
    assert mask.shape == (128, 128) and mask.dtype == np.float32
    assert mask.min() >= 0 and mask.max() <= 1
    assert np.array_equal(mask, render_mask(LAYOUT.reshape(10).tolist(), 128))

    def at(x: float, y: float) -> float:
        return float(mask[int(y * 128), int(x * 128)])

    shape = MaskShape()
    cheek = at(0.3, 0.58)
    assert cheek == pytest.approx(shape.face_value, abs=0.02)  # the grey face region
    for x, y in LAYOUT[[0, 1]]:  # eyes and (just above) brows are the brightest
        assert at(x, y) > cheek + 0.3 and at(x, y - 0.05) > cheek + 0.2
    assert at(*LAYOUT[2]) > cheek + 0.2  # nose
    assert at(*LAYOUT[3:].mean(0)) > cheek + 0.3  # mouth
    assert at(0.02, 0.02) == 0 and at(0.98, 0.98) == 0  # black background
    assert 0 < at(0.5, 0.05) < shape.face_value  # smooth edge at the forehead, not a step
    values = np.unique(np.round(mask, 3))
    assert len(values) > 50  # blurred, not a handful of flat levels


def test_mask_follows_the_landmarks():
    shifted = render_mask(LAYOUT + [0.1, 0.0], 128)
    assert np.allclose(shifted[:, 13:], render_mask(LAYOUT, 128)[:, :-13], atol=0.05)
    # a face tilted by 90 degrees (eyes one above the other) gives the mask turned the same way
    turned = LAYOUT[:, ::-1].copy()
    turned[:, 0] = 1 - turned[:, 0]
    rotated = render_mask(turned, 128)
    assert np.abs(np.rot90(render_mask(LAYOUT, 128), -1) - rotated).mean() < 0.01


def test_bad_landmarks_and_shapes_are_one_clear_error():
    with pytest.raises(ValueError, match="expected 5 finite"):
        as_landmarks([0.1] * 9)
    with pytest.raises(ValueError, match="expected 5 finite"):
        render_mask([float("nan")] * 10, 32)
    with pytest.raises(ValueError, match="grey levels"):
        MaskShape(face_value=1.5)


# --- the network ---


def test_forward_at_small_size_and_batch_one(one_torch_thread):
    detector = create_detector("addnet").eval()
    assert detector.preprocess.face_mask and detector.input_channels == 4
    x = masked_input(1)
    output = detector(x)
    assert output.logits.shape == (1, 2) and torch.isfinite(output.logits).all()
    assert torch.equal(output.maps["mask"], x[:, 3:])
    detector.train()
    losses = detector.loss(detector(masked_input(2)), None, torch.tensor([0, 1]), AddNet.Loss())
    losses["total"].backward()
    assert detector.encoder.conv1.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="B x 4 x H x W"):
        detector(torch.randn(1, 3, SIZE, SIZE))


def _gate_record(detector: AddNet) -> tuple[dict, list]:
    """Outputs of the layers before each gate, and inputs of the layers after it, recorded by hooks."""
    seen: dict[str, torch.Tensor] = {}
    encoder = detector.encoder
    handles = []
    for name in ("act2", "block1", "block2", "block3"):
        module = getattr(encoder, name)
        handles.append(module.register_forward_hook(lambda m, a, out, n=name: seen.setdefault(f"out:{n}", out.clone())))
    for name in ("conv1", "block1", "block2", "block3", "block4"):
        module = getattr(encoder, name)
        handles.append(module.register_forward_pre_hook(lambda m, a, n=name: seen.setdefault(f"in:{n}", a[0].clone())))
    return seen, handles


def test_the_mask_multiplies_in_at_the_five_points_pooled_in_cascade(one_torch_thread):
    detector = create_detector("addnet").eval()
    x = torch.randn(2, 4, SIZE, SIZE)
    mask = torch.ones(2, 1, SIZE, SIZE)
    mask[:, :, :, : SIZE // 2] = 0  # the left half is masked out
    mask[1, :, SIZE // 2 :, SIZE // 2 :] = 0.25  # and a softer quarter in the second image
    x[:, 3:] = mask
    seen, handles = _gate_record(detector)
    with torch.no_grad():
        detector(x)
    for handle in handles:
        handle.remove()

    assert torch.equal(seen["in:conv1"], x[:, :3] * mask)
    pooled = mask
    for before, after in (("act2", "block1"), ("block1", "block2"), ("block2", "block3"), ("block3", "block4")):
        features = seen[f"out:{before}"]
        pooled = F.adaptive_avg_pool2d(pooled, features.shape[-2:])
        torch.testing.assert_close(seen[f"in:{after}"], features * pooled)
        zero = (pooled == 0).expand_as(features)
        assert zero.any() and (features[zero] != 0).any()  # the gate, not the layer, zeroes them
        assert (seen[f"in:{after}"][zero] == 0).all()
    assert seen["in:block4"].shape[-2:] == (4, 4)  # 64 px: block3 runs at 1/16


def test_mask_points_can_be_dropped_for_an_ablation(one_torch_thread):
    detector = create_detector("addnet", mask_points=["input", "block3"]).eval()
    x = masked_input(1)
    seen, handles = _gate_record(detector)
    with torch.no_grad():
        detector(x)
    for handle in handles:
        handle.remove()
    assert torch.equal(seen["in:block1"], seen["out:act2"])  # the stem is not gated
    assert not torch.equal(seen["in:block4"], seen["out:block3"])
    with pytest.raises(ValueError, match="mask_points"):
        create_detector("addnet", mask_points=["block4"])


def test_declared_as_a_reimplementation_with_its_choices():
    info = AddNet.describe()
    assert info["source"] == "re-implementation"
    assert set(info["choices"]) <= set(info["config"]) | set(info["loss"])
    assert info["face_mask_recipe"]["face_value"] == MaskShape().face_value
    assert info["preprocess"]["face_mask"] is True


# --- landmarks from extraction to the network ---


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """A folder dataset of two real-face videos, extracted with the Haar face detector (no landmarks of its own)."""
    root = tmp_path_factory.mktemp("addnet_media")
    boxes = {
        "real/a": write_face_video(root / "real" / "a.mp4", n_frames=4, seed=1),
        "fake/b": write_face_video(root / "fake" / "b.mp4", n_frames=4, seed=2, photo="grace_hopper"),
    }
    out = tmp_path_factory.mktemp("addnet_extracted")
    settings = ExtractSettings(detector="haar", frames=2, size=SIZE)
    summary = extract("folder", root, out, settings, progress=False)
    assert summary.faces == 4
    return out / "manifest.parquet", boxes


def test_extraction_stores_landmarks_in_crop_coordinates_flagged_as_approximated(extracted, capsys):
    frame = manifest.read(extracted[0])
    assert set(frame[manifest.LANDMARKS_SOURCE]) == {"box"}  # Haar has none: placed in its box
    assert main(["manifest", "info", str(extracted[0])]) == 0
    assert "face landmarks: 4 box, 0 without" in capsys.readouterr().out
    canonical = np.array(CANONICAL_LANDMARKS)
    for row in frame.itertuples():
        points = np.asarray(row.landmarks).reshape(5, 2)
        w, h = row.x2 - row.x1, row.y2 - row.y1
        side = round(1.3 * max(w, h))  # the faces sit inside the 320 x 240 frames: an unclipped square
        expected = 0.5 + (canonical - 0.5) * np.array([w, h]) / side
        np.testing.assert_allclose(points, expected, atol=0.01)


def test_dataset_appends_the_mask_channel_and_flips_it_with_the_image(extracted):
    path = extracted[0]
    preprocess = Preprocess(input_size=SIZE, face_mask=True)
    dataset = ManifestDataset(path, preprocess=preprocess)
    plain = ManifestDataset(path, preprocess=Preprocess(input_size=SIZE))
    image, label = dataset[0]
    assert image.shape == (4, SIZE, SIZE) and plain[0][0].shape == (3, SIZE, SIZE)
    assert torch.equal(image[:3], plain[0][0])
    landmarks = np.asarray(dataset.frame[manifest.LANDMARKS].iat[0])
    assert torch.equal(image[3], torch.from_numpy(render_mask(landmarks, SIZE)))
    flipped = ManifestDataset(path, preprocess=preprocess, train=True, flip_p=1.0)
    assert torch.equal(flipped[(0, 7)][0], image.flip(-1))
    # a random crop cuts the mask where it cuts the image
    larger = Preprocess(input_size=SIZE - 8, resize=SIZE, face_mask=True)
    cropped = ManifestDataset(path, preprocess=larger, train=True, flip_p=0.0)[(0, 3)][0]
    windows = [
        (t, s) for t in range(9) for s in range(9) if torch.equal(cropped[:3], image[:3, t : t + 56, s : s + 56])
    ]
    assert len(windows) == 1
    top, left = windows[0]
    assert (top, left) != (4, 4)  # not the centre: a real random offset
    assert torch.equal(cropped[3], image[3, top : top + 56, left : left + 56])


def test_a_manifest_without_landmarks_is_a_one_line_error_saying_how_to_add_them(extracted, tmp_path):
    frame = manifest.read(extracted[0]).drop(columns=["abspath", manifest.LANDMARKS, manifest.LANDMARKS_SOURCE])
    old = tmp_path / "old.parquet"
    manifest.write(frame.assign(path=[str(Path(extracted[0]).parent / p) for p in frame["path"]]), old)
    assert manifest.LANDMARKS not in manifest.read(old).columns
    ManifestDataset(old, preprocess=Preprocess(input_size=SIZE))  # every other detector still reads it
    with pytest.raises(manifest.ManifestError) as error:
        ManifestDataset(old, preprocess=Preprocess(input_size=SIZE, face_mask=True))
    message = str(error.value)
    assert "\n" not in message and str(old) in message and f"recce manifest landmarks {old}" in message
    assert "4 of 4 crops have no face landmarks" in message
    overrides = [f"data.manifest={old}", "data.datasets=null", "data.compressions=null", "data.val_split=null"]
    overrides.append("data.train_split=test")  # the folder indexer puts everything in test
    config = load_config(CONFIGS / "ffpp_c23.yaml", overrides)
    with pytest.raises(ConfigError, match=f"{old}: 4 of 4 crops have no face landmarks"):
        load_datasets(config)


def test_recce_manifest_landmarks_adds_them_with_the_face_detector(extracted, tmp_path, capsys):
    frame = manifest.read(extracted[0]).drop(columns=["abspath", manifest.LANDMARKS, manifest.LANDMARKS_SOURCE])
    source = Path(extracted[0]).parent / "without.parquet"
    manifest.write(frame, source)
    completed = tmp_path.parent / "completed.parquet"
    assert main(["manifest", "landmarks", str(source), "--out", str(completed), "--face-detector", "haar"]) == 2
    assert "write it beside" in capsys.readouterr().err
    assert main(["manifest", "landmarks", str(source), "--face-detector", "haar", "--no-progress"]) == 0
    assert "4 needed landmarks (haar)" in capsys.readouterr().out
    assert main(["manifest", "info", str(source)]) == 0
    assert "face landmarks: " in capsys.readouterr().out
    filled = manifest.read(source)
    assert filled[manifest.LANDMARKS].notna().all()
    assert set(filled[manifest.LANDMARKS_SOURCE]) <= {"box", "crop"}
    # Haar finds the faces in the crops again: the points land close to those extraction placed
    original = np.stack(manifest.read(extracted[0])[manifest.LANDMARKS])
    found = filled[manifest.LANDMARKS_SOURCE].eq("box").to_numpy()
    assert found.sum() >= 2
    assert np.abs(np.stack(filled[manifest.LANDMARKS])[found] - original[found]).max() < 0.08
    image, _ = ManifestDataset(source, preprocess=Preprocess(input_size=SIZE, face_mask=True))[0]
    assert image.shape == (4, SIZE, SIZE)


def test_in_memory_scoring_takes_landmarks_per_crop(one_torch_thread):
    detector = create_detector("addnet", preprocess=Preprocess(input_size=SIZE, face_mask=True)).eval()
    crop, box = face_patch("astronaut", face_width=40)
    crops = [crop, crop[:, ::-1].copy()]
    landmarks = [LAYOUT, LAYOUT * [-1, 1] + [1, 0]]
    scores, maps = score_images(detector, crops, landmarks=landmarks, device="cpu", maps=True)
    assert scores.shape == (2,) and ((scores > 0) & (scores < 1)).all()
    np.testing.assert_array_equal(maps[0]["mask"], render_mask(LAYOUT, SIZE))
    expected = torch.stack(
        [to_tensor(c, detector.preprocess, landmarks=lm) for c, lm in zip(crops, landmarks, strict=True)]
    )
    with torch.no_grad():
        direct = torch.softmax(detector(expected).logits, -1)[:, 1].numpy()
    np.testing.assert_allclose(scores, direct, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="landmarks of every crop"):
        score_images(detector, crops, device="cpu")


def test_configs_resolve_to_the_paper_protocol():
    sizes = {}
    for path in sorted(CONFIGS.glob("*.yaml")):
        config = load_config(path)
        assert config.model.name == "addnet" and config.preprocess().face_mask, path
        sizes[path.stem] = config.preprocess().input_size
        assert config.detector_config() == AddNet.Config() and config.loss_config() == AddNet.Loss()
    assert sizes == {
        "ffpp_c23": 299,
        "ffpp_c23_deepfakes": 299,
        "ffpp_c23_face2face": 299,
        "ffpp_c23_faceswap": 299,
        "ffpp_c23_neuraltextures": 299,
        "wilddeepfake": 224,
    }
    methods = {p.stem: load_config(p).data.methods for p in CONFIGS.glob("ffpp_c23_*.yaml")}
    assert methods["ffpp_c23_faceswap"] == ["FaceSwap"]
    xception = load_config(CONFIGS.parent / "xception" / "ffpp_c23.yaml")
    addnet = load_config(CONFIGS / "ffpp_c23.yaml")
    assert addnet.optim == xception.optim and addnet.data == xception.data
    assert addnet.train.steps == xception.train.steps and addnet.train.batch_size == xception.train.batch_size
