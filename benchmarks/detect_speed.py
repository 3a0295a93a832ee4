"""`recce detect` on the CPU: where one file's time goes, and today's sequential path against the overlapped one.

Builds a 720p H.264 clip of a moving real face (with `tests/media.py`, the test media code) and copies it to
`--files` files, then measures in one process, with the Haar face detector and an untrained RECCE at `--size`
(its speed is the trained one's):
1. one file by stage: decoding the `--frames` sampled frames, face detection, the forgery detector;
2. `MediaScorer.score_files` over all files with `prefetch=0` (each file read, then scored: today's path) and
   with `prefetch=1` (the next file decoded and its faces found in a background thread while the detector
   scores the current one), checking that both give the same records.

Run: python benchmarks/detect_speed.py [--files 3 --seconds 10 --size 299 --frames 32]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
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
    parser.add_argument("--files", type=int, default=3)
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
        scorer = MediaScorer(model, build_detector("haar"), settings)
        score_images(model, [frames_crop(scorer, clip)[0]], device="cpu")  # warm-up: first-call allocations

        decoded, decode_s = timed(lambda: list(_frames(clip, "video", args.frames, settings.max_pixels)))
        found, face_s = timed(scorer.faces.detect, [frame for _, frame in decoded])
        crops = [
            crop_face(frame, face.box, settings.scale, scorer.size)
            for (_, frame), faces in zip(decoded, found, strict=True)
            for face in faces
        ]
        _, model_s = timed(score_images, model, crops, batch_size=args.batch_size, device="cpu")
        total = decode_s + face_s + model_s
        print(
            f"one file, {len(crops)} faces: decode {decode_s:.1f} s ({decode_s / total:.0%}), face detection "
            f"{face_s:.1f} s ({face_s / total:.0%}), forgery detector {model_s:.1f} s ({model_s / total:.0%})"
        )

        sequential, sequential_s = timed(scorer.score_files, files, progress=False, prefetch=0)
        overlapped, overlapped_s = timed(scorer.score_files, files, progress=False, prefetch=1)
        same = [r.to_dict(0.5) for r in sequential] == [r.to_dict(0.5) for r in overlapped]
        print(f"{'path':<34} {'seconds':>8} {'per file':>9}")
        for name, seconds in (
            ("sequential (prefetch=0, before)", sequential_s),
            ("overlapped (prefetch=1)", overlapped_s),
        ):
            print(f"{name:<34} {seconds:>8.1f} {seconds / args.files:>9.1f}")
        print(f"speed-up {sequential_s / overlapped_s:.2f}x; same records (scores, boxes, errors): {same}")


def frames_crop(scorer: MediaScorer, clip: Path) -> list:
    _, frame = next(_frames(clip, "video", 1, scorer.settings.max_pixels))
    faces = scorer.faces.detect([frame])[0]
    return [crop_face(frame, face.box, scorer.settings.scale, scorer.size) for face in faces]


if __name__ == "__main__":
    main()
