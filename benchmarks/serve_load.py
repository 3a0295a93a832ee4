"""Load test of `recce serve`: rounds of N concurrent uploads of one short video, checked against `recce detect`.

Baseline, measured in the same run: `recce detect --json` on N copies of the video in one process (the model is
loaded once). Then `recce serve` in a subprocess gets `--rounds` rounds of N simultaneous uploads; every result
must equal the baseline's record (all fields but the path). The server's resident memory (VmRSS from /proc) is
sampled every 50 ms; its peak per round shows whether memory stays bounded as jobs pile up.

    python benchmarks/serve_load.py [--checkpoint C] [--uploads 20] [--rounds 3] [--frames 8]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.media import write_face_video  # noqa: E402


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


class RssSampler:
    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self.stop = pid, 0.0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.05):
            self.peak = max(self.peak, rss_mb(self.pid))

    def reset(self) -> float:
        peak, self.peak = self.peak, 0.0
        return peak


def start_server(checkpoint: Path, args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "recce", "serve", "--checkpoint", str(checkpoint), "--port", "0"]
    command += ["--frames", str(args.frames), "--batch-size", str(args.batch_size), "--workers", str(args.workers)]
    command += ["--queue", str(args.uploads)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in process.stdout:
        if match := re.search(r"ready on (http://\S+/)", line):
            threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()
            return process, match.group(1)
    raise RuntimeError("recce serve exited before printing its URL")


def one_job(client: httpx.Client, video: Path) -> dict:
    with video.open("rb") as file:
        response = client.post("/api/jobs", files={"file": (video.name, file, "video/mp4")})
    response.raise_for_status()
    job_id = response.json()["id"]
    while True:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.1)


def without_path(record: dict) -> dict:
    return {key: value for key, value in record.items() if key != "path"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="default: a fresh 64 px RECCE (untrained; scores are still checked)")
    parser.add_argument("--uploads", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--frames", type=int, default=8, help="frames sampled per video (serve and detect)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--video-frames", type=int, default=50, help="length of the test video (25 fps)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="serve-load-"))
    try:
        if args.checkpoint:
            checkpoint = Path(args.checkpoint)
        else:
            from recce import checkpoints
            from recce.detectors import Preprocess
            from recce.detectors.recce import Recce

            checkpoint = checkpoints.save(Recce(preprocess=Preprocess(64)).eval(), work / "recce-64.safetensors")
        video = work / "clip.mp4"
        write_face_video(video, n_frames=args.video_frames)
        copies = work / "copies"
        copies.mkdir()
        for k in range(args.uploads):
            shutil.copy(video, copies / f"clip-{k:02d}.mp4")
        print(
            f"config: {args.uploads} uploads x {args.rounds} rounds, video {video.stat().st_size / 1024:.0f} KB "
            f"({args.video_frames} frames 320x240), --frames {args.frames} --batch-size {args.batch_size} "
            f"--workers {args.workers}, checkpoint {checkpoint.name}, {os.cpu_count()} CPUs"
        )

        start = time.perf_counter()
        detect = subprocess.run(
            [
                sys.executable,
                "-m",
                "recce",
                "detect",
                str(copies),
                "--checkpoint",
                str(checkpoint),
                "--json",
                "--frames",
                str(args.frames),
                "--batch-size",
                str(args.batch_size),
                "--no-progress",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        detect_s = time.perf_counter() - start
        records = json.loads(detect.stdout)["files"]
        expected = without_path(records[0])
        assert all(without_path(r) == expected for r in records)
        detect_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(
            f"baseline: recce detect --json on {len(records)} copies, one process: {detect_s:.1f} s "
            f"({len(records) / detect_s:.2f} files/s, start-up and model load included), peak RSS {detect_peak:.0f} MB"
        )

        process, url = start_server(checkpoint, args)
        sampler = RssSampler(process.pid)
        try:
            time.sleep(0.5)
            print(f"server: {url}  RSS idle {rss_mb(process.pid):.0f} MB")
            print("| round | wall (s) | files/s | identical to detect | peak RSS (MB) | RSS after (MB) |")
            print("|---|---|---|---|---|---|")
            with httpx.Client(base_url=url, timeout=600) as client, ThreadPoolExecutor(args.uploads) as pool:
                for number in range(1, args.rounds + 1):
                    sampler.reset()
                    start = time.perf_counter()
                    jobs = list(pool.map(lambda _: one_job(client, video), range(args.uploads)))
                    wall = time.perf_counter() - start
                    same = sum(j["status"] == "done" and without_path(j["result"]) == expected for j in jobs)
                    print(
                        f"| {number} | {wall:.1f} | {args.uploads / wall:.2f} | {same}/{args.uploads} | "
                        f"{sampler.reset():.0f} | {rss_mb(process.pid):.0f} |"
                    )
            print(f"server peak RSS over the whole run (VmHWM): {rss_mb(process.pid, 'VmHWM'):.0f} MB")
        finally:
            sampler.stop.set()
            sampler.thread.join()
            process.terminate()
            process.wait(timeout=60)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
