"""What every registered detector must do, whatever it is: the contract the engine, checkpoints and tools rely on.

Parametrised over `list_detectors()`, so a new detector module is held to it without editing this file.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import onnxruntime
import pytest
import torch
from media import background, face_patch, face_photo, write_tiny_manifest

from recce import checkpoints
from recce.cli import main
from recce.data.faces.mask import box_landmarks
from recce.detectors import Detector, DetectorOutput, create_detector, detector_class, list_detectors
from recce.engine.config import load_config
from recce.engine.graphs import TOLERANCE, cpu_graph
from recce.engine.inference import score_images
from recce.engine.train import train
from recce.export import export_onnx

SIZE = 64
NAMES = list_detectors()
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _small(name: str) -> Detector:
    cls = detector_class(name)
    return create_detector(name, preprocess=dataclasses.replace(cls.default_preprocess, input_size=SIZE, resize=None))


def _inputs(detector: Detector, batch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(batch)
    return torch.rand(batch, detector.input_channels, SIZE, SIZE, generator=generator) * 2 - 1


@pytest.fixture(scope="module")
def tiny_manifest(tmp_path_factory) -> Path:
    return write_tiny_manifest(tmp_path_factory.mktemp("contract"), SIZE)


def test_the_registry_names_every_detector_of_the_papers_tables():
    assert {"recce", "xception"} <= set(NAMES)
    for name in NAMES:
        cls = detector_class(name)
        assert cls.name == name and cls.source in ("official code", "port", "re-implementation")
        assert cls.paper and cls.reference
        assert set(cls.map_kinds.values()) <= {"heatmap", "image"}
        described = cls.describe()
        assert set(cls.choices) <= set(described["config"]) | set(described["loss"]), cls.choices


@pytest.mark.parametrize("name", NAMES)
def test_forward_shapes_at_a_small_size_and_batch_one(name):
    detector = _small(name).eval()
    for batch in (1, 3):
        with torch.no_grad():
            output = detector(_inputs(detector, batch))
        assert isinstance(output, DetectorOutput)
        assert output.logits.shape == (batch, detector.config.num_classes)
        assert torch.isfinite(output.logits).all()
        for map_name, value in output.maps.items():
            assert map_name in detector.map_kinds, map_name
            channels = 3 if detector.map_kinds[map_name] == "image" else 1
            assert value.shape[:2] == (batch, channels), (map_name, value.shape)
    explained = detector.explain(_inputs(detector, 2))
    assert set(explained.maps) == set(detector.map_kinds)


@pytest.mark.parametrize("name", NAMES)
def test_loss_terms_are_finite_and_backward_reaches_the_weights(name):
    detector = _small(name).train()
    images, labels = _inputs(detector, 4), torch.tensor([0, 1, 0, 1])
    losses = detector.training_step(images, labels, detector, detector.Loss())
    assert "total" in losses and all(torch.isfinite(v).all() for v in losses.values())
    losses["total"].backward()
    grads = [p.grad for p in detector.parameters() if p.requires_grad]
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads) > len(grads) // 2


@pytest.mark.parametrize("name", NAMES)
def test_no_state_is_kept_between_calls(name):
    detector = _small(name).eval()
    attributes = set(vars(detector))
    buffers = {k: v.clone() for k, v in detector.state_dict().items()}
    x = _inputs(detector, 2)
    with torch.no_grad():
        first = detector(x).logits
        detector(_inputs(detector, 3))
        again = detector(x).logits
    torch.testing.assert_close(first, again)
    assert set(vars(detector)) == attributes
    for key, value in detector.state_dict().items():
        torch.testing.assert_close(value, buffers[key], msg=key)


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_round_trip_and_onnx_export(name, tmp_path):
    detector = _small(name).eval()
    path = checkpoints.save(detector, tmp_path / f"{name}.safetensors", provenance={"test": True})
    loaded = checkpoints.load(path)
    assert type(loaded) is type(detector) and loaded.config == detector.config
    assert loaded.preprocess == detector.preprocess
    x = _inputs(detector, 3)
    with torch.no_grad():
        expected = detector(x)
        torch.testing.assert_close(loaded(x).logits, expected.logits)

    onnx_path = export_onnx(loaded, tmp_path / f"{name}.onnx")
    session = onnxruntime.InferenceSession(str(onnx_path))
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["detector"] == name and json.loads(meta["preprocess"])["input_size"] == SIZE
    outputs = [o.name for o in session.get_outputs()]
    assert outputs == json.loads(meta["outputs"]) and outputs[0] == "p_fake"
    for batch in (1, 3):
        x = _inputs(detector, batch)
        got = session.run(None, {"image": x.numpy()})
        with torch.no_grad():
            output = detector(x)
        p_fake = torch.sigmoid(output.logits[:, 0]) if output.logits.shape[1] == 1 else output.logits.softmax(1)[:, 1]
        np.testing.assert_allclose(got[0], p_fake.numpy(), rtol=1e-4, atol=1e-5)
        for map_name, value in zip(outputs[1:], got[1:], strict=True):
            np.testing.assert_allclose(value, output.maps[map_name].numpy(), rtol=1e-3, atol=1e-4)


def _face_crops() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Two real faces and their mirror images, and a background, with each crop's five normalised landmarks (the
    face mask of Add-Net's 4th input channel is drawn from them, as `recce detect` does)."""
    crops, landmarks = [], []
    for photo in ("astronaut", "grace_hopper"):
        patch, box = face_patch(photo, face_width=40)
        points = box_landmarks(box) / np.array([patch.shape[1], patch.shape[0]])
        mirrored = points[[1, 0, 2, 4, 3]] * [-1, 1] + [1, 0]  # left and right eye, mouth corners swap
        crops += [patch, np.ascontiguousarray(patch[:, ::-1])]
        landmarks += [points, mirrored]
    return [*crops, background(SIZE, SIZE, seed=1)], [*landmarks, landmarks[0]]


@pytest.mark.parametrize("runtime", ["torchscript", "onnxruntime"])
@pytest.mark.parametrize("name", NAMES)
def test_cpu_runtimes_give_the_eager_scores(name, runtime):
    """`recce detect --runtime`: the graph's P(fake) against the eager model's on real face crops, in batches of 2
    and 1 (the graphs keep the batch axis free). Tolerance 1e-6 (`TOLERANCE`): batch-norm folding and other kernels
    reorder float32 sums, a few ulps per score (about 1e-7 measured). The weights are perturbed so that the scores
    move off 0.5 and differ between the crops by at least 10 times the tolerance: a graph that lost a branch or
    ignored part of its input (Add-Net's mask channel) would miss them."""
    detector = _small(name).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in detector.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    crops, landmarks = _face_crops()
    eager, _ = score_images(detector, crops, batch_size=2, device="cpu", landmarks=landmarks)
    graph = cpu_graph(detector, runtime)
    scores, _ = score_images(detector, crops, batch_size=2, device="cpu", landmarks=landmarks, graph=graph)
    assert np.ptp(eager) >= 10 * TOLERANCE, eager
    np.testing.assert_allclose(scores, eager, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("name", NAMES)
def test_a_training_run_through_the_engine_resumes_exactly(name, tmp_path, tiny_manifest):
    def config(out: Path):
        overrides = [
            f"model.name={name}",
            "model.pretrained=null",
            "model.init_from=null",  # a second-stage config (MultiAtt) names its first stage's run
            f"data.manifest={tiny_manifest}",
            f"data.size={SIZE}",
            "data.workers=0",
            "data.datasets=null",
            "data.compressions=null",
            "train.batch_size=4",
            "train.steps=2",
            "train.log_every=1",
            "train.val_every=2",
            "train.checkpoint_every=1",
            "train.channels_last=false",
            f"train.out={out}",
        ]
        return load_config(Path(__file__).parents[1] / "configs" / name / "ffpp_c23.yaml", overrides)

    straight = train(config(tmp_path / "a"), progress=False)
    train(config(tmp_path / "b"), progress=False, stop_after=1)
    resumed = train(config(tmp_path / "b"), resume=True, progress=False)
    assert straight.finished and resumed.finished and straight.best is not None

    def losses(run: Path) -> list[dict]:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in row.items() if k.startswith("loss/")} for row in rows if "loss/total" in row]

    assert losses(straight.out) == losses(resumed.out) and len(losses(straight.out)) == 2
    best = checkpoints.load(straight.out / "best.safetensors")
    assert best.name == name and best.preprocess.input_size == SIZE
    meta = checkpoints.read_metadata(straight.out / "best.safetensors")
    assert meta["provenance"]["trained_on"] == ["toy"] and meta["provenance"]["train_config"]["model"]["name"] == name

    # the trained checkpoint scores media with `recce detect`, and draws a panel of its maps
    photo = tmp_path / "astronaut.png"
    cv2.imwrite(str(photo), cv2.cvtColor(face_photo("astronaut"), cv2.COLOR_RGB2BGR))
    masks = tmp_path / "masks"
    args = ["detect", str(photo), "--checkpoint", str(straight.out / "best.safetensors"), "--face-detector", "haar"]
    assert main([*args, "--json", "--no-progress", "--save-masks", str(masks)]) == 0
    assert len(list(masks.glob("*.png"))) >= 1


def test_recce_models_lists_every_detector(capsys):
    assert main(["models"]) == 0
    printed = capsys.readouterr().out
    for name in NAMES:
        assert f"\n{name} " in printed
    assert main(["models", "recce", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["config"]["aggregation"] == "graph"
    assert main(["models", "nosuch"]) == 2
    assert "unknown detector 'nosuch'" in capsys.readouterr().err
