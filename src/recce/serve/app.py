"""The FastAPI app: the page, its static files, and the HTTP API the page and scripts use.

POST /api/jobs (multipart field `file`; query `model`, `threshold`) -> 202 {"id", ...}
GET /api/jobs/{id} -> status, progress and, when done, the `recce detect --json` record and the face panels
GET /api/jobs/{id}/faces/{k}.png, /api/jobs/{id}/result.json, /api/jobs/{id}/result.csv
GET /api/models, GET /health
"""

from __future__ import annotations

import io
import re
import tempfile
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.middleware.trustedhost import TrustedHostMiddleware

from recce.detect import write_csv
from recce.serve.jobs import Busy, Job, JobManager
from recce.serve.scoring import Scorer
from recce.serve.upload import EXTENSIONS, UploadError, receive

STATIC = Path(__file__).parent / "static"
LOCAL_HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class ServeSettings:
    threshold: float = 0.5  # P(fake) at or above which a file is FAKE
    max_upload_mb: int = 500
    keep_minutes: float = 60.0  # how long a finished job's result and panels stay
    workers: int = 2  # jobs scored at once
    queue: int = 16  # jobs waiting beyond those; more are answered 503
    allowed_hosts: tuple[str, ...] = LOCAL_HOSTS  # Host headers accepted ("*": any), against DNS rebinding

    def __post_init__(self):
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        if self.max_upload_mb < 1 or self.keep_minutes <= 0:
            raise ValueError("max upload must be at least 1 MB and keep-minutes positive")


def create_app(scorer: Scorer, settings: ServeSettings = ServeSettings(), temp_root: Path | None = None) -> FastAPI:
    """The app; uploads and panels live in a fresh temporary folder that is deleted when the app stops."""
    root = Path(tempfile.mkdtemp(prefix="recce-serve-", dir=temp_root))
    manager = JobManager(
        root,
        lambda job: scorer.score(job.model, job.upload, job.name, job.folder, job.progress),
        workers=settings.workers,
        queue=settings.queue,
        keep_seconds=settings.keep_minutes * 60,
    )
    limit = settings.max_upload_mb * 2**20
    default_model = next(iter(scorer.models))

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        manager.close()

    app = FastAPI(title="recce serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.manager = manager
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(settings.allowed_hosts))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def job_or_404(job_id: str) -> Job:
        job = manager.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id} (finished jobs are kept {settings.keep_minutes:g} minutes)")
        return job

    def done_or_409(job_id: str) -> Job:
        job = job_or_404(job_id)
        if job.status != "done":
            raise HTTPException(409, f"job {job_id} is {job.status}, it has no result")
        return job

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "workers": manager.workers, "capacity": manager.capacity, "jobs": manager.counts()}

    @app.get("/api/models")
    def models() -> dict:
        return {
            "models": [loaded.describe() for loaded in scorer.models.values()],
            "default": default_model,
            "face_detector": scorer.face_detector_name,
            "frames": scorer.settings.frames,
            "threshold": settings.threshold,
            "max_upload_mb": settings.max_upload_mb,
            "extensions": list(EXTENSIONS),
        }

    @app.post("/api/jobs", status_code=202)
    async def create_job(request: Request, model: str | None = None, threshold: float | None = None) -> dict:
        model = model or default_model
        if model not in scorer.models:
            raise HTTPException(400, f"unknown model {model!r}; loaded: {', '.join(scorer.models)}")
        threshold = settings.threshold if threshold is None else threshold
        if not 0.0 <= threshold <= 1.0:
            raise HTTPException(400, f"threshold must be in [0, 1], got {threshold}")
        try:
            job = manager.open()
        except Busy as error:
            raise HTTPException(503, str(error), headers={"Retry-After": "10"}) from None
        try:
            upload = await receive(request.stream(), dict(request.headers), job.folder, limit)
        except UploadError as error:
            manager.discard(job)
            raise HTTPException(error.status, error.message) from None
        except BaseException:
            manager.discard(job)
            raise
        job.model, job.threshold, job.name, job.upload = model, threshold, upload.name, upload.path
        manager.submit(job)
        return {"id": job.id, "status": job.status, "name": job.name, "url": f"/api/jobs/{job.id}"}

    @app.get("/api/jobs/{job_id}")
    def job_status(job_id: str) -> dict:
        return _job_json(job_or_404(job_id), scorer)

    @app.get("/api/jobs/{job_id}/faces/{face}.png")
    def face_panel(job_id: str, face: int) -> FileResponse:
        job = done_or_409(job_id)
        panel = next((p for p in job.output.panels if p.face == face), None)
        if panel is None:
            raise HTTPException(404, f"job {job_id} has no panel for face {face}")
        return FileResponse(panel.file, media_type="image/png")

    @app.get("/api/jobs/{job_id}/result.json")
    def result_json(job_id: str) -> JSONResponse:
        job = done_or_409(job_id)
        return JSONResponse([job.output.result.to_dict(job.threshold)], headers=_attachment(job, "json"))

    @app.get("/api/jobs/{job_id}/result.csv")
    def result_csv(job_id: str) -> Response:
        job = done_or_409(job_id)
        text = io.StringIO()
        write_csv([job.output.result], job.threshold, text)
        return Response(text.getvalue(), media_type="text/csv", headers=_attachment(job, "csv"))

    return app


def _attachment(job: Job, extension: str) -> dict[str, str]:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(job.name).stem).strip("._") or "upload"
    return {"Content-Disposition": f'attachment; filename="{stem}.recce.{extension}"'}


def _job_json(job: Job, scorer: Scorer) -> dict:
    data = {
        "id": job.id,
        "name": job.name,
        "status": job.status,
        "stage": job.stage,
        "progress": {"done": job.done, "total": job.total},
        "model": scorer.models[job.model].describe() if job.model else None,
        "face_detector": scorer.face_detector_name,
        "threshold": job.threshold,
        "message": job.message,
    }
    if job.status == "done":
        scored = job.output
        with_face = {face.frame for face in scored.result.faces}
        data["result"] = scored.result.to_dict(job.threshold)
        data["timeline"] = {
            "fps": scored.fps,
            "sampled": scored.sampled,
            "no_face": [frame for frame in scored.sampled if frame not in with_face],
        }
        data["panels"] = [
            {"face": p.face, "frame": p.frame, "score": p.score, "url": f"/api/jobs/{job.id}/faces/{p.face}.png"}
            for p in scored.panels
        ]
        data["downloads"] = {"json": f"/api/jobs/{job.id}/result.json", "csv": f"/api/jobs/{job.id}/result.csv"}
    return data
