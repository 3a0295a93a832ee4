"""Jobs: a bounded worker pool behind a bounded queue, and the clean-up of uploads and results.

A slot is taken before the upload is received (so a full server answers at once instead of after a 500 MB
upload) and given back when the job ends. The upload is deleted as soon as its job ends; the job's folder
(face panels) and its result are dropped `keep_seconds` after it ended.
"""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Runner = Callable[["Job"], Any]


@dataclass
class Job:
    id: str
    folder: Path
    model: str = ""
    threshold: float = 0.5
    name: str = ""  # the client's file name (display only)
    upload: Path | None = None
    status: str = "receiving"  # receiving | queued | running | done | failed
    stage: str = ""
    done: int = 0
    total: int = 0
    created: float = field(default_factory=time.time)
    ended: float | None = None
    output: Any = None  # what the runner returned
    message: str | None = None  # why the job failed

    def progress(self, stage: str, done: int, total: int) -> None:
        self.stage, self.done, self.total = stage, done, total


class Busy(Exception):
    """Every worker is busy and the queue is full."""


class JobManager:
    def __init__(self, root: Path, runner: Runner, workers: int = 2, queue: int = 16, keep_seconds: float = 3600):
        if workers < 1 or queue < 0:
            raise ValueError(f"need at least one worker and a queue of zero or more, got {workers} and {queue}")
        self.root = root
        self.runner = runner
        self.workers = workers
        self.capacity = workers + queue
        self.keep_seconds = keep_seconds
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="recce-job")
        self.jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._active = 0  # jobs receiving, queued or running
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep_loop, name="recce-sweep", daemon=True)
        self._sweeper.start()

    def open(self) -> Job:
        """A new job with its own folder, holding a slot; Busy when there is none."""
        with self._lock:
            if self._active >= self.capacity:
                raise Busy(
                    f"the server is busy: {self._active} job(s) are queued or running "
                    f"({self.workers} worker(s), queue of {self.capacity - self.workers}); try again shortly"
                )
            self._active += 1
            job_id = uuid.uuid4().hex
            job = Job(job_id, self.root / job_id)
            self.jobs[job.id] = job
        job.folder.mkdir(parents=True)
        return job

    def discard(self, job: Job) -> None:
        """Drop a job whose upload was refused, and free its slot."""
        with self._lock:
            self.jobs.pop(job.id, None)
            self._active -= 1
        shutil.rmtree(job.folder, ignore_errors=True)

    def submit(self, job: Job) -> None:
        job.status, job.stage = "queued", "waiting for a worker"
        self.pool.submit(self._run, job)

    def _run(self, job: Job) -> None:
        job.status = "running"
        try:
            job.output = self.runner(job)
            job.status = "done"
        except Exception as error:  # a bug or a resource problem: the job fails, the server goes on
            job.status, job.message = "failed", f"{job.name}: {type(error).__name__}: {error}"
        finally:
            job.stage, job.ended = job.status, time.time()
            if job.upload is not None:
                job.upload.unlink(missing_ok=True)
            with self._lock:
                self._active -= 1

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def counts(self) -> dict[str, int]:
        jobs = list(self.jobs.values())
        return {status: sum(j.status == status for j in jobs) for status in ("queued", "running", "done", "failed")}

    def sweep(self, now: float | None = None) -> int:
        """Forget jobs that ended more than keep_seconds ago and delete their folders; how many went."""
        now = time.time() if now is None else now
        with self._lock:
            old = [j for j in self.jobs.values() if j.ended is not None and now - j.ended >= self.keep_seconds]
            for job in old:
                del self.jobs[job.id]
        for job in old:
            shutil.rmtree(job.folder, ignore_errors=True)
        return len(old)

    def _sweep_loop(self) -> None:
        while not self._stop.wait(min(60.0, max(1.0, self.keep_seconds / 4))):
            self.sweep()

    def close(self) -> None:
        """Stop the workers (running jobs finish) and delete every upload and result."""
        self._stop.set()
        self.pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self.root, ignore_errors=True)
