"""`recce detect` on the CPU: where one file's time goes, and today's sequential path against the overlapped one.

Builds a 720p H.264 clip of a moving real face (with `tests/media.py`, the test media code) and copies it to
`--files` files, then measures in one process, with the Haar face detector and an untrained RECCE at `--size`
(its speed is the trained one's):
1. one file by stage: decoding the `--frames` sampled frames, face detection, the forgery detector (eager torch
   and the frozen TorchScript graph of `--runtime torchscript`);
2. `MediaScorer.score_files` over all files: today's path (eager torch, `prefetch=0`: each file read, then
   scored), eager with `prefetch=1` (the next file decoded and its faces found in a background thread while the
   detector scores the current one), and torchscript with `prefetch=1`; the records are compared with today's
   (boxes, errors exactly; scores to 1e-6).

Run: python benchmarks/detect_speed.py [--files 2 --seconds 10 --size 299 --frames 32]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recce.data.faces import build_detector  # noqa: E402
from recce.data.faces.crop import crop_face  # noqa: E402
from recce.detect import DetectSettings, MediaScorer, _frames  # noqa: E402
from recce.detectors import Preprocess  # noqa: E402
from recce.detectors.recce import Recce  # noqa: E402
from recce.engine.inference import score_images  # noqa: E402
from tests.media import moving_face_frames, write_video  # noqa: E402


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    value = function(*args, **kwargs)
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=10, help="clip length at 25 fps")
    parser.add_argument("--size", type=int, default=299, help="the detector's input side")
    parser.add_argument("--frames", type=int, default=32, help="frames sampled per video")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, {os.cpu_count()} CPUs, "
        f"{torch.get_num_threads()} torch threads; {args.files} x {args.seconds} s 1280x720 clip, "
        f"{args.frames} frames, RECCE at {args.size}, Haar face detector, batch {args.batch_size}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        frames, _ = moving_face_frames(args.seconds * 25, size=(1280, 720), face_width=240)
        clip = write_video(Path(tmp) / "clip0.mp4", frames)
        del frames
        files = [clip] + [Path(shutil.copy(clip, Path(tmp) / f"clip{i}.mp4")) for i in range(1, args.files)]

        settings = DetectSettings(frames=args.frames, batch_size=args.batch_size, device="cpu")
        model = Recce(preprocess=Preprocess(args.size)).eval()
        faces = build_detector("haar")
        scorer = MediaScorer(model, faces, settings)
        (fast, compile_s) = timed(MediaScorer, model, faces, replace(settings, runtime="torchscript"))
        print(f"torchscript graph built in {compile_s:.1f} s (once per run)")
        for graph in (None, fast.graph):  # warm-up: first-call allocations
            score_images(model, frames_crop(scorer, clip), device="cpu", graph=graph)

        decoded, decode_s = timed(lambda: list(_frames(clip, "video", args.frames, settings.max_pixels)))
        found, face_s = timed(faces.detect, [frame for _, frame in decoded])
        crops = [
            crop_face(frame, face.box, settings.scale, scorer.size)
            for (_, frame), boxes in zip(decoded, found, strict=True)
            for face in boxes
        ]
        _, model_s = timed(score_images, model, crops, batch_size=args.batch_size, device="cpu")
        _, graph_s = timed(score_images, model, crops, batch_size=args.batch_size, device="cpu", graph=fast.graph)
        total = decode_s + face_s + model_s
        print(
            f"one file, {len(crops)} faces: decode {decode_s:.1f} s ({decode_s / total:.0%}), face detection "
            f"{face_s:.1f} s ({face_s / total:.0%}), forgery detector {model_s:.1f} s ({model_s / total:.0%}); "
            f"torchscript detector {graph_s:.1f} s ({model_s / graph_s:.2f}x)"
        )

        runs = [
            ("torch, sequential (today)", scorer, 0),
            ("torch, prefetch=1", scorer, 1),
            ("torchscript, prefetch=1", fast, 1),
        ]
        print(f"{'path':<28} {'seconds':>8} {'per file':>9} {'speed-up':>9} {'max |score diff|':>17} same boxes")
        baseline_s, baseline = None, None
        for name, runner, prefetch in runs:
            results, seconds = timed(runner.score_files, files, progress=False, prefetch=prefetch)
            baseline_s, baseline = baseline_s or seconds, baseline or results
            diff = max(
                abs(a.score - b.score)
                for r, b_r in zip(results, baseline, strict=True)
                for a, b in zip(r.faces, b_r.faces, strict=True)
            )
            same = [[(f.frame, f.box) for f in r.faces] + [r.error] for r in results] == [
                [(f.frame, f.box) for f in r.faces] + [r.error] for r in baseline
            ]
            print(
                f"{name:<28} {seconds:>8.1f} {seconds / args.files:>9.1f} {baseline_s / seconds:>8.2f}x "
                f"{diff:>17.1e} {same}"
            )


def frames_crop(scorer: MediaScorer, clip: Path) -> list:
    _, frame = next(_frames(clip, "video", 1, scorer.settings.max_pixels))
    faces = scorer.faces.detect([frame])[0]
    return [crop_face(frame, face.box, scorer.settings.scale, scorer.size) for face in faces]


if __name__ == "__main__":
    main()
