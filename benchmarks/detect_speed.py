"""`recce detect` on the CPU: where one file's time goes, and today's path against the overlapped one and each runtime.

Builds a 720p H.264 clip of a moving real face (with `tests/media.py`, the test media code) and copies it to
`--files` files, then measures in one process, with the Haar face detector and untrained detectors at their input
size (or `--size`; an untrained network is as fast as a trained one):
1. one file by stage: decoding the `--frames` sampled frames, face detection, the forgery detector (eager torch);
2. for each `--detector` (default recce; `all` for every registered one), `MediaScorer.score_files` over all files:
   today's path (eager torch, `prefetch=0`: each file read, then scored), then eager torch, `--runtime torchscript`
   and `--runtime onnxruntime` each with `prefetch=1` (the next file decoded and its faces found in a background
   thread while the detector scores the current one). The paths take turns within each of `--repeats` rounds and
   the medians are printed, with each graph's build time (once per run, its check against eager included) and the
   largest score difference from today's records (boxes and errors must be the same).

Run: python benchmarks/detect_speed.py [--detector all --files 2 --seconds 10 --frames 32 --repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import onnxruntime
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recce.data.faces import build_detector  # noqa: E402
from recce.detect import DetectSettings, MediaScorer, _frames  # noqa: E402
from recce.detectors import create_detector, detector_class, list_detectors  # noqa: E402
from recce.engine.inference import score_images  # noqa: E402
from tests.media import moving_face_frames, write_video  # noqa: E402

PATHS = (  # (row, runtime, prefetch); the first is today's path, the baseline of every row
    ("torch, sequential (today)", "torch", 0),
    ("torch, prefetch=1", "torch", 1),
    ("torchscript, prefetch=1", "torchscript", 1),
    ("onnxruntime, prefetch=1", "onnxruntime", 1),
)


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    value = function(*args, **kwargs)
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector", nargs="+", default=["recce"], help="detector names, or all")
    parser.add_argument("--files", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=10, help="clip length at 25 fps")
    parser.add_argument("--size", type=int, help="the detectors' input side (default: each one's own)")
    parser.add_argument("--frames", type=int, default=32, help="frames sampled per video")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of every path; medians are printed")
    args = parser.parse_args()
    names = list_detectors() if args.detector == ["all"] else args.detector
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
        f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, load average "
        f"{os.getloadavg()[0]:.1f}; {args.files} x {args.seconds} s 1280x720 clip, {args.frames} frames, Haar face "
        f"detector, batch {args.batch_size}, {args.repeats} rounds (medians)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        frames, _ = moving_face_frames(args.seconds * 25, size=(1280, 720), face_width=240)
        clip = write_video(Path(tmp) / "clip0.mp4", frames)
        del frames
        files = [clip] + [Path(shutil.copy(clip, Path(tmp) / f"clip{i}.mp4")) for i in range(1, args.files)]
        faces = build_detector("haar")
        settings = DetectSettings(frames=args.frames, batch_size=args.batch_size, device="cpu")
        for number, name in enumerate(names):
            model = create_detector(name, preprocess=detector_class(name).default_preprocess.at_size(args.size))
            scorers, builds = {}, {}
            for runtime in dict.fromkeys(runtime for _, runtime, _ in PATHS):
                scorers[runtime], builds[runtime] = timed(MediaScorer, model, faces, replace(settings, runtime=runtime))
            if number == 0:
                print_stages(scorers["torch"], clip, args)
            measure(name, model.preprocess.input_size, scorers, builds, files, args.repeats)


def print_stages(scorer: MediaScorer, clip: Path, args: argparse.Namespace) -> None:
    """One file by stage, with the first detector in eager torch (after a warm-up file)."""
    scorer.score_file(clip)
    decoded, decode_s = timed(lambda: list(_frames(clip, "video", args.frames, scorer.settings.max_pixels)))
    _, face_s = timed(scorer.faces.detect, [frame for _, frame in decoded])
    found = scorer._find_faces(clip)
    _, model_s = timed(
        score_images, scorer.model, found.crops, batch_size=args.batch_size, device="cpu", landmarks=found.landmarks
    )
    total = decode_s + face_s + model_s
    print(
        f"one file, {len(found.crops)} faces, {scorer.model.name}: decode {decode_s:.1f} s ({decode_s / total:.0%}), "
        f"face detection {face_s:.1f} s ({face_s / total:.0%}), forgery detector {model_s:.1f} s "
        f"({model_s / total:.0%})"
    )


def measure(name: str, size: int, scorers: dict, builds: dict, files: list[Path], repeats: int) -> None:
    """Every path in turn, `repeats` rounds, after one warm-up file each; medians against today's."""
    for scorer in scorers.values():
        scorer.score_file(files[0])
    seconds: dict[str, list[float]] = {row: [] for row, _, _ in PATHS}
    records = {}
    for _ in range(repeats):
        for row, runtime, prefetch in PATHS:
            records[row], took = timed(scorers[runtime].score_files, files, progress=False, prefetch=prefetch)
            seconds[row].append(took)
    baseline_row = PATHS[0][0]
    baseline, baseline_s = records[baseline_row], statistics.median(seconds[baseline_row])
    print(f"\n{name} at {size} px, {len(files)} file(s)")
    print(
        f"{'path':<28} {'build s':>8} {'seconds':>8} {'per file':>9} {'speed-up':>9} {'max |score diff|':>17} "
        f"same boxes"
    )
    for row, runtime, _ in PATHS:
        median = statistics.median(seconds[row])
        diff = max(
            (
                abs(a.score - b.score)
                for got, want in zip(records[row], baseline, strict=True)
                for a, b in zip(got.faces, want.faces, strict=True)
            ),
            default=0.0,
        )
        same = [[(f.frame, f.box) for f in r.faces] + [r.error] for r in records[row]] == [
            [(f.frame, f.box) for f in r.faces] + [r.error] for r in baseline
        ]
        build = f"{builds[runtime]:.1f}" if runtime != "torch" else ""
        print(
            f"{row:<28} {build:>8} {median:>8.1f} {median / len(files):>9.1f} {baseline_s / median:>8.2f}x "
            f"{diff:>17.1e} {same}",
            flush=True,
        )


if __name__ == "__main__":
    main()
