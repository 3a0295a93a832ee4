"""Torch threads on a busy machine: the demo's training step at each thread count, side by side in one run.

`recce demo` trains with as many threads as the machine has idle cores (by the 1-minute load average). This script
measures why: RECCE's training step at the demo's size (64 px, batch 32) with 1 thread, with every core, and with
the demo's choice, each for the same number of steps, under whatever load the machine has now (it prints it).

    python benchmarks/demo_threads.py --steps 10
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from recce.demo import idle_cores
from recce.detectors import Preprocess, create_detector


def images_per_second(threads: int, steps: int, size: int, batch: int) -> float:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create_detector("recce", preprocess=Preprocess(size)).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images, labels = torch.rand(batch, 3, size, size) * 2 - 1, torch.arange(batch) % 2
    model.training_step(images, labels, model, model.Loss())["total"].backward()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        model.training_step(images, labels, model, model.Loss())["total"].backward()
        optimizer.step()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    print(
        f"{cores} cores, load average {os.getloadavg()[0]:.1f}, demo's choice {idle_cores()} thread(s), "
        f"torch {torch.__version__}, RECCE {args.size} px, batch {args.batch_size}, {args.steps} steps"
    )
    for threads in dict.fromkeys((1, cores, idle_cores())):
        rate = images_per_second(threads, args.steps, args.size, args.batch_size)
        print(f"{threads} thread(s): {rate:.1f} images/s")


if __name__ == "__main__":
    main()
