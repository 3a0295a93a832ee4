"""`recce detect` on a real-face video and image, and on bad inputs that must be reported, not fatal."""

from __future__ import annotations

import json
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch
from media import background, face_photo, write_face_video, write_text_as_video, write_truncated_copy

from recce import checkpoints
from recce.cli import main
from recce.data.faces import build_detector
from recce.detect import RUNTIMES, DetectSettings, MediaScorer
from recce.detectors import Detector, DetectorOutput, Preprocess
from recce.detectors.recce import Recce
from recce.detectors.xception import XceptionConfig
from recce.engine.graphs import GraphError

SIZE = 64


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "recce.safetensors"
    return checkpoints.save(Recce(preprocess=Preprocess(SIZE)).eval(), path)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    boxes = write_face_video(root / "face.mp4", n_frames=10)
    write_truncated_copy(root / "face.mp4", root / "truncated.mp4", keep=0.3)
    write_text_as_video(root / "notes.mp4")
    cv2.imwrite(str(root / "astronaut.png"), cv2.cvtColor(face_photo("astronaut"), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(root / "wall.png"), cv2.cvtColor(background(240, 320, seed=3), cv2.COLOR_RGB2BGR))
    (root / "readme.txt").write_text("not media")
    return root, boxes


def test_video_scores_per_face_frame_and_file(checkpoint, media):
    root, boxes = media
    detector = MediaScorer(checkpoints.load(checkpoint), build_detector("haar"), DetectSettings(frames=5, batch_size=4))
    result, crops = detector.score_file(root / "face.mp4", keep_crops=True)
    assert result.error is None and result.kind == "video"
    assert result.frames == 5 and result.frames_with_face == 5
    frames_seen = sorted({face.frame for face in result.faces})
    assert frames_seen == [0, 2, 4, 7, 9]  # linspace(0, 9, 5) rounded
    for face in result.faces:  # the detected box overlaps the true face
        x1, y1, x2, y2 = boxes[face.frame]
        fx1, fy1, fx2, fy2 = face.box
        overlap = max(0, min(x2, fx2) - max(x1, fx1)) * max(0, min(y2, fy2) - max(y1, fy1))
        assert overlap > 0.3 * (x2 - x1) * (y2 - y1)
    per_frame = result.frame_scores()
    assert result.score == pytest.approx(np.mean(list(per_frame.values())))
    assert all(0 <= face.score <= 1 for face in result.faces)
    assert len(crops) == len(result.faces) and crops[0][0].shape == (SIZE, SIZE, 3)


def test_cli_reports_bad_inputs_and_exits_zero(checkpoint, media, tmp_path, capsys):
    root, _ = media
    missing = root / "missing.mp4"
    args = [
        "detect",
        str(root),
        str(missing),
        "--checkpoint",
        str(checkpoint),
        "--detector",
        "haar",
        "--frames",
        "4",
        "--json",
        "--no-progress",
        "--save-masks",
        str(tmp_path / "masks"),
    ]
    assert main(args) == 1  # an explicitly named file is missing: reported, and the exit status says so
    report = json.loads(capsys.readouterr().out)
    assert report["detector"] == "recce" and report["threshold"] == 0.5 and report["face_detector"] == "haar"
    assert report["checkpoint"] == str(checkpoint) and len(report["checkpoint_sha256"]) == 64
    assert report["recce_version"] and report["created"].endswith("+00:00")
    assert [p.rsplit("/", 1)[-1] for p in report["skipped"]] == ["readme.txt"]
    results = {r["path"].rsplit("/", 1)[-1]: r for r in report["files"]}
    assert set(results) == {"face.mp4", "truncated.mp4", "notes.mp4", "astronaut.png", "wall.png", "missing.mp4"}
    assert results["face.mp4"]["verdict"] in ("FAKE", "real") and results["face.mp4"]["frames_with_face"] == 4
    assert results["astronaut.png"]["kind"] == "image" and results["astronaut.png"]["score"] is not None
    assert results["wall.png"]["verdict"] == "no face" and results["wall.png"]["error"] is None
    for name in ("notes.mp4", "missing.mp4", "truncated.mp4"):
        assert results[name]["verdict"] == "error" and name in results[name]["error"]
    assert "not found" in results["missing.mp4"]["error"]
    assert "not a readable video" in results["truncated.mp4"]["error"]
    panels = sorted((tmp_path / "masks").glob("*.png"))
    assert panels and cv2.imread(str(panels[0])) is not None


def test_table_output_and_bad_checkpoint(checkpoint, media, capsys):
    root, _ = media
    assert (
        main(
            [
                "detect",
                str(root / "face.mp4"),
                str(root / "readme.txt"),
                "--checkpoint",
                str(checkpoint),
                "--detector",
                "haar",
                "--frames",
                "3",
                "--no-progress",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "face.mp4" in out and "2 file(s): 1 scored, 0 without a face, 1 failed" in out
    assert "readme.txt: not an image or video" in out
    assert main(["detect", str(root / "face.mp4"), "--checkpoint", str(root / "notes.mp4")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["detect", str(root / "face.mp4"), "--checkpoint", str(checkpoint), "--frames", "0"]) == 2
    assert capsys.readouterr().err == "recce detect: frames must be at least 1, got 0\n"
    assert main(["detect", str(root), "--checkpoint", str(checkpoint), "--face-detector", "haar", "--no-progress"]) == 0
    assert "skipped 1 file(s) that are not images or videos" in capsys.readouterr().out


def test_a_synthetic_checkpoint_gets_a_warning(media, tmp_path, capsys):
    root, _ = media
    path = checkpoints.save(
        Recce(preprocess=Preprocess(SIZE)), tmp_path / "demo.safetensors", {"trained_on": ["synthetic"]}
    )
    assert main(["detect", str(root / "astronaut.png"), "--checkpoint", str(path), "--face-detector", "haar"]) == 0
    assert "trained on the synthetic benchmark" in capsys.readouterr().err


def test_overlapped_reading_gives_the_scores_of_the_sequential_path(checkpoint, media):
    """Decoding and face finding of the next files in a background thread changes no score, order or error."""
    root, _ = media
    scorer = MediaScorer(checkpoints.load(checkpoint), build_detector("haar"), DetectSettings(frames=4, batch_size=3))
    files = [
        root / name for name in ("face.mp4", "notes.mp4", "astronaut.png", "truncated.mp4", "wall.png", "gone.mp4")
    ]
    sequential = [r.to_dict(0.5) for r in scorer.score_files(files, progress=False, prefetch=0)]
    one_by_one = [scorer.score_file(path)[0].to_dict(0.5) for path in files]
    overlapped = [r.to_dict(0.5) for r in scorer.score_files(files, progress=False, prefetch=2)]
    assert overlapped == sequential == one_by_one  # exact: each file's computation is the same
    assert [r["path"] for r in overlapped] == [str(path) for path in files]
    assert overlapped[1]["error"] and overlapped[5]["error"]  # the text file and the missing one
    assert len(overlapped[0]["faces"]) == 4 and len(overlapped[2]["faces"]) >= 1


def test_graph_runtimes_give_the_scores_of_eager_torch(media):
    """The frozen TorchScript graph and the ONNX Runtime session against eager RECCE at the paper's 299 px input,
    on the same file and weights (perturbed so that scores spread): equal within 1e-6 (float reordering)."""
    root, _ = media
    torch.manual_seed(0)
    model = Recce(preprocess=Preprocess(299)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    faces = build_detector("haar")
    results = {
        runtime: MediaScorer(model, faces, DetectSettings(frames=3, device="cpu", runtime=runtime)).score_file(
            root / "face.mp4"
        )[0]
        for runtime in RUNTIMES
    }
    eager = results["torch"]
    assert len(eager.faces) == 3
    eager_scores = np.array([f.score for f in eager.faces])
    assert eager_scores.std() > 1e-4  # the scores differ per face, so equality means something
    for runtime in ("torchscript", "onnxruntime"):
        graph = results[runtime]
        assert [f.box for f in graph.faces] == [f.box for f in eager.faces]
        np.testing.assert_allclose([f.score for f in graph.faces], eager_scores, rtol=0, atol=1e-6, err_msg=runtime)
        assert graph.score == pytest.approx(eager.score, abs=1e-6)


class _SignOfTheMean(Detector):
    """A detector whose output depends on a Python branch over its input: a tracer records one side only (the
    traced example batch has a negative mean, the probe batch a positive one), torch.export refuses it."""

    name = "sign-of-the-mean"
    Config = XceptionConfig

    def __init__(self):
        super().__init__(preprocess=Preprocess(SIZE))
        self.conv = torch.nn.Conv2d(3, 1, 3)

    def forward(self, x: torch.Tensor) -> DetectorOutput:
        logits = self.conv(x).flatten(1).mean(1, keepdim=True)
        return DetectorOutput(logits if float(x.mean()) > 0 else -logits, {}, {})


def test_a_graph_that_is_not_the_detector_is_refused_with_the_reason():
    faces = build_detector("haar")
    settings = DetectSettings(device="cpu", runtime="torchscript")
    with pytest.raises(GraphError, match="runtime torchscript refused for detector sign-of-the-mean: its P.fake. "):
        MediaScorer(_SignOfTheMean().eval(), faces, settings)
    with pytest.raises(GraphError, match="runtime onnxruntime cannot run detector sign-of-the-mean .*Error: "):
        MediaScorer(_SignOfTheMean().eval(), faces, replace(settings, runtime="onnxruntime"))


@pytest.mark.usefixtures("one_torch_thread")  # restores the thread count that --threads sets
def test_cli_runtimes_print_the_eager_scores_and_record_the_runtime(checkpoint, media, tmp_path, capsys):
    root, _ = media
    argv = ["detect", str(root / "face.mp4"), "--checkpoint", str(checkpoint), "--face-detector", "haar"]
    argv += ["--frames", "3", "--device", "cpu", "--json", "--no-progress", "--threads", "1"]
    runs = {}
    for runtime in RUNTIMES:
        assert main([*argv, "--runtime", runtime]) == 0
        runs[runtime] = json.loads(capsys.readouterr().out)
    eager = runs["torch"]["files"][0]
    for runtime, run in runs.items():
        assert run["runtime"] == runtime
        assert len(run["files"][0]["faces"]) == len(eager["faces"]) == 3
        assert run["files"][0]["score"] == pytest.approx(eager["score"], abs=1e-6)

    # the maps come from the eager model, which then gives the scores too: the record says so
    masks = tmp_path / "masks"
    assert main([*argv, "--runtime", "torchscript", "--save-masks", str(masks)]) == 0
    captured = capsys.readouterr()
    drawn = json.loads(captured.out)
    assert drawn["runtime"] == "torch" and drawn["files"][0] == eager
    assert "--save-masks draws the maps with eager torch" in captured.err
    assert len(list(masks.glob("*.png"))) == 3

    assert main([*argv, "--threads", "0"]) == 2
    assert "threads must be at least 1, got 0" in capsys.readouterr().err
