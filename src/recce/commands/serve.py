"""`recce serve`: check images and videos in a browser, on this machine, with any loaded checkpoint."""

from __future__ import annotations

import argparse

import uvicorn

from recce import checkpoints
from recce.detect import DetectSettings

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", action="append", required=True, help="a .safetensors checkpoint (repeatable)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--frames", type=int, default=32, help="frames sampled evenly from each video (default 32)")
    parser.add_argument("--threshold", type=float, default=0.5, help="P(fake) at or above which a file is FAKE")
    parser.add_argument("--face-detector", default="auto", help="auto, haar or retinaface (default auto)")
    parser.add_argument("--weights", help="RetinaFace weights (mobilenet0.25_Final.pth or Resnet50_Final.pth)")
    parser.add_argument("--min-face-score", type=float, default=0.6, help="face detector confidence threshold")
    parser.add_argument("--batch-size", type=int, default=8, help="frames per batch; smaller shows finer progress")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--workers", type=int, default=2, help="files scored at once (default 2)")
    parser.add_argument("--queue", type=int, default=16, help="files waiting beyond those; more get 503 (default 16)")
    parser.add_argument("--max-upload-mb", type=int, default=500, help="largest upload accepted (default 500)")
    parser.add_argument("--keep-minutes", type=float, default=60, help="how long results and panels are kept")
    parser.add_argument("--panels", type=int, default=4, help="face panels drawn per file, most suspicious first")


def run(args: argparse.Namespace) -> int:
    from recce.serve.app import LOCAL_HOSTS, ServeSettings, create_app
    from recce.serve.scoring import Scorer, load_models

    local = args.host in LOOPBACK
    try:
        settings = ServeSettings(
            threshold=args.threshold,
            max_upload_mb=args.max_upload_mb,
            keep_minutes=args.keep_minutes,
            workers=args.workers,
            queue=args.queue,
            allowed_hosts=(*LOCAL_HOSTS, "[::1]") if local else ("*",),
        )
        detect_settings = DetectSettings(frames=args.frames, batch_size=args.batch_size, device=args.device)
        scorer = Scorer(
            load_models(args.checkpoint),
            detect_settings,
            face_detector=args.face_detector,
            weights=args.weights,
            min_face_score=args.min_face_score,
            panels=args.panels,
        )
        app = create_app(scorer, settings)
    except (checkpoints.CheckpointError, ValueError) as error:
        print(f"recce serve: {error}")
        return 2
    if not local:
        print(
            f"recce serve: warning: listening on {args.host}: anyone who can reach this machine on port {args.port} "
            "can upload files and use the models (no login, no encryption). An SSH tunnel is safer: see the README."
        )
    server = _Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning"))
    server.run()
    return 0


class _Server(uvicorn.Server):
    """uvicorn's server, printing the URL (with the real port when --port 0) once it accepts connections."""

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.should_exit:
            return
        host, port = self.servers[0].sockets[0].getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"recce serve: ready on http://{shown}:{port}/  (Ctrl+C stops it)", flush=True)
