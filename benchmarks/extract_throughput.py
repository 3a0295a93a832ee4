"""Face-extraction throughput: selective decoding against decode-everything sampling, and `recce extract` runs.

Builds H.264 videos of a moving real face (with `tests/media.py`, imported by putting the repository root on
sys.path, so the test media and the benchmark media are the same code), then measures in one process:
1. sampling `--sample` evenly spaced frames per video: the naive way (decode and convert every frame, then
   pick) against `recce.data.video.read_frames` (convert only the wanted frames, keyframe seeks);
2. the whole extraction (sample, Haar detection, crop, PNG, parts, manifest) in-process and with a spawn
   pool of each `--workers` count; the pool timings include the workers' start-up (imports, detector).

Run: python benchmarks/extract_throughput.py [--videos 8 --length 300 --width 640 --height 480 --gop 250]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import av
import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recce.data.extract import ExtractSettings, extract  # noqa: E402
from recce.data.video import read_frames, sample_indices  # noqa: E402
from tests.media import write_face_video  # noqa: E402


def naive_sample(path: Path, indices: list[int]) -> dict[int, np.ndarray]:
    """The common baseline: decode and convert every frame, keep the wanted ones."""
    with av.open(str(path)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    return {i: frames[i] for i in indices}


def time_it(function, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--length", type=int, default=300, help="frames per video")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--gop", type=int, nargs="+", default=[250, 30], help="keyframe intervals to compare")
    parser.add_argument("--sample", type=int, default=32, help="frames sampled per video")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=3, help="decode timings: best of this many")
    args = parser.parse_args()

    print(
        f"cpus {os.cpu_count()} | python {platform.python_version()} | torch {torch.__version__} | "
        f"opencv {cv2.__version__} | av {av.__version__} (FFmpeg {av.ffmpeg_version_info}) | "
        f"numpy {np.__version__}"
    )
    print(
        f"{args.videos} videos x {args.length} frames, {args.width}x{args.height} H.264 (libx264 veryfast crf 18, "
        f"B-frames), sampling {args.sample} frames per video (uniform)"
    )
    indices = sample_indices(args.length, "uniform", args.sample)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for gop in args.gop:
            root = tmp / f"gop{gop}"
            for i in range(args.videos):
                write_face_video(
                    root / "real" / f"v{i}.mp4",
                    n_frames=args.length,
                    seed=i,
                    gop=gop,
                    size=(args.width, args.height),
                    face_width=args.width // 5,
                )
            videos = sorted(root.rglob("*.mp4"))
            naive = time_it(lambda videos=videos: [naive_sample(v, indices) for v in videos], args.repeat)
            ours = time_it(lambda videos=videos: [dict(read_frames(v, indices)) for v in videos], args.repeat)
            sampled = len(indices) * len(videos)
            print(
                f"\nsampling, keyframe every {gop} frames: decode-all-then-pick {sampled / naive:8.1f} frames/s "
                f"({len(videos) / naive:.2f} videos/s) | read_frames {sampled / ours:8.1f} frames/s "
                f"({len(videos) / ours:.2f} videos/s) | speed-up x{naive / ours:.2f}"
            )

        root = tmp / f"gop{args.gop[0]}"
        settings = ExtractSettings(sampling="uniform", frames=args.sample, detector="haar", min_score=0.6)
        print(f"\nextraction (Haar, PNG 299x299, keyframe every {args.gop[0]} frames), wall time of the whole run:")
        for workers in [0, *args.workers]:
            out = tmp / f"out-{workers}"
            start = time.perf_counter()
            summary = extract("folder", root, out, settings, workers=workers, progress=False)
            seconds = time.perf_counter() - start
            label = "in-process" if workers == 0 else f"workers {workers}"
            print(
                f"  {label:10s}: {summary.done / seconds:6.2f} videos/s, {summary.frames / seconds:7.1f} frames/s, "
                f"{summary.faces}/{summary.frames} faces, {seconds:6.2f} s"
            )


if __name__ == "__main__":
    main()
