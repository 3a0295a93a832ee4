"""`recce serve` through FastAPI's test client: real uploads scored by a tiny RECCE checkpoint.

Images, videos, bad files, an upload over the limit (with and without Content-Length), a full queue, and
concurrent jobs whose results must equal `recce detect --json` on the same files.
"""

from __future__ import annotations

import csv
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from media import background, face_photo, write_face_video, write_text_as_video, write_truncated_copy

from recce import checkpoints
from recce.cli import main
from recce.detect import DetectSettings
from recce.detectors import Preprocess
from recce.detectors.recce import Recce
from recce.serve.app import ServeSettings, create_app
from recce.serve.scoring import Scorer, load_models

SIZE = 64
FRAMES = 5
BATCH = 4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    return checkpoints.save(Recce(preprocess=Preprocess(SIZE)).eval(), path)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    write_face_video(root / "face.mp4", n_frames=10, absent=(9,))
    write_truncated_copy(root / "face.mp4", root / "truncated.mp4", keep=0.3)
    write_text_as_video(root / "notes.mp4")
    cv2.imwrite(str(root / "astronaut.png"), cv2.cvtColor(face_photo("astronaut"), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(root / "wall.png"), cv2.cvtColor(background(240, 320, seed=3), cv2.COLOR_RGB2BGR))
    (root / "readme.txt").write_text("not media")
    return root


@pytest.fixture(scope="module")
def scorer(checkpoint):
    return Scorer(load_models([checkpoint]), DetectSettings(frames=FRAMES, batch_size=BATCH), face_detector="haar")


def make_client(scorer, tmp_path, **settings) -> TestClient:
    app = create_app(scorer, ServeSettings(**settings), temp_root=tmp_path)
    return TestClient(app, base_url="http://127.0.0.1")


@pytest.fixture
def client(scorer, tmp_path):
    with make_client(scorer, tmp_path, max_upload_mb=2) as client:
        yield client


def upload(client, path, name=None, **params):
    with open(path, "rb") as file:
        return client.post("/api/jobs", params=params, files={"file": (name or path.name, file)})


def wait(client, job_id, timeout=120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s: {job}")


def detect_json(capsys, checkpoint, *paths) -> dict:
    """`recce detect --json` on the same files and settings, by file name."""
    args = ["detect", *map(str, paths), "--checkpoint", str(checkpoint), "--detector", "haar", "--json"]
    assert main([*args, "--frames", str(FRAMES), "--batch-size", str(BATCH), "--no-progress"]) == 0
    return {r["path"].rsplit("/", 1)[-1]: r for r in json.loads(capsys.readouterr().out)["files"]}


def without_path(record: dict) -> dict:
    return {key: value for key, value in record.items() if key != "path"}


def test_video_job_result_panels_and_downloads(client, media, checkpoint, capsys, tmp_path):
    response = upload(client, media / "face.mp4")
    assert response.status_code == 202, response.text
    job = wait(client, response.json()["id"])
    assert job["status"] == "done" and job["stage"] == "done"
    assert job["progress"] == {"done": 4, "total": 4}  # the last stage: four face panels drawn
    result = job["result"]
    expected = detect_json(capsys, checkpoint, media / "face.mp4")["face.mp4"]
    assert result["path"] == "face.mp4" and without_path(result) == without_path(expected)
    assert result["frames"] == FRAMES and result["frames_with_face"] == FRAMES - 1
    assert job["timeline"]["sampled"] == [0, 2, 4, 7, 9] and job["timeline"]["no_face"] == [9]
    assert job["timeline"]["fps"] == pytest.approx(25.0)
    assert job["model"]["detector"] == "recce" and job["model"]["checkpoint"] == checkpoint.name
    scores = [face["score"] for face in result["faces"]]
    assert [panel["face"] for panel in job["panels"]] == sorted(range(len(scores)), key=lambda k: -scores[k])[:4]
    panel = client.get(job["panels"][0]["url"])
    assert panel.status_code == 200 and panel.headers["content-type"] == "image/png"
    image = cv2.imdecode(np.frombuffer(panel.content, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape[0] == 192 + 26 and image.shape[1] > 5 * 192  # frame, crop and three RECCE maps
    assert client.get(f"/api/jobs/{job['id']}/faces/{len(scores)}.png").status_code == 404
    assert client.get(job["downloads"]["json"]).json() == [result]
    rows = list(csv.DictReader(io.StringIO(client.get(job["downloads"]["csv"]).text)))
    assert len(rows) == 1 and rows[0]["path"] == "face.mp4" and rows[0]["verdict"] == result["verdict"]
    folder = next(tmp_path.glob("recce-serve-*")) / job["id"]
    assert not list(folder.glob("upload*")), "the upload is deleted once its job ended"


def test_image_and_a_file_without_a_face(client, media):
    astronaut = wait(client, upload(client, media / "astronaut.png").json()["id"])
    assert astronaut["result"]["kind"] == "image" and astronaut["result"]["score"] is not None
    assert astronaut["timeline"]["sampled"] == [0] and len(astronaut["panels"]) == 1
    wall = wait(client, upload(client, media / "wall.png").json()["id"])
    assert wall["result"]["verdict"] == "no face" and wall["result"]["error"] is None
    assert wall["panels"] == [] and wall["timeline"]["no_face"] == [0]


def test_bad_files_get_clear_messages_without_server_paths(client, media, tmp_path):
    refused = upload(client, media / "readme.txt")
    assert refused.status_code == 415 and refused.json()["detail"].startswith("readme.txt: not an image or video")
    notes = wait(client, upload(client, media / "notes.mp4").json()["id"])
    assert notes["result"]["verdict"] == "error"
    assert notes["result"]["error"].startswith("notes.mp4: not a readable video")
    truncated = wait(client, upload(client, media / "truncated.mp4").json()["id"])
    assert (
        truncated["result"]["verdict"] == "error"
        and "truncated.mp4: not a readable video" in (truncated["result"]["error"])
    )
    hostile = wait(client, upload(client, media / "face.mp4", name="../../etc/evil.mp4").json()["id"])
    assert hostile["name"] == "evil.mp4" and hostile["result"]["path"] == "evil.mp4"
    for job in (notes, truncated, hostile):
        assert str(tmp_path) not in json.dumps(job)
    assert client.post("/api/jobs", content=b"raw bytes").status_code == 400
    no_file = client.post("/api/jobs", data={"note": "x"}, files={"other": ("a.mp4", b"123")})
    assert no_file.status_code == 400 and "no file" in no_file.json()["detail"]
    assert upload(client, media / "face.mp4", model="nope").status_code == 400
    assert upload(client, media / "face.mp4", threshold=2).status_code == 400
    assert client.get("/api/jobs/0123").status_code == 404
    assert client.get("/health").json()["jobs"]["failed"] == 0
    served = sorted(p.name for p in next(tmp_path.glob("recce-serve-*")).iterdir())
    assert served == sorted([notes["id"], truncated["id"], hostile["id"]]), "refused uploads leave nothing"


def test_upload_over_the_limit_is_refused_while_streaming(client, tmp_path):
    big = tmp_path / "big.mp4"
    big.write_bytes(np.random.default_rng(0).bytes(3 * 2**20))
    declared = upload(client, big)
    assert declared.status_code == 413 and "limit" in declared.json()["detail"]

    boundary = "recceboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.mp4"\r\n'
        "Content-Type: video/mp4\r\n\r\n"
    ).encode()

    def chunked():  # no Content-Length: the limit is enforced on the bytes as they arrive
        yield head
        for _ in range(12):
            yield bytes(2**18)
        yield f"\r\n--{boundary}--\r\n".encode()

    streamed = client.post(
        "/api/jobs", content=chunked(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    assert streamed.status_code == 413 and streamed.json()["detail"] == "big.mp4: larger than the 2 MB upload limit"
    assert not list(next(tmp_path.glob("recce-serve-*")).iterdir())


def test_full_queue_answers_503_and_queued_jobs_still_finish(scorer, media, tmp_path):
    with make_client(scorer, tmp_path, workers=1, queue=1) as client:
        release = threading.Event()
        client.app.state.manager.pool.submit(release.wait)  # the only worker is busy until released
        first, second = (upload(client, media / "astronaut.png") for _ in range(2))
        assert first.status_code == second.status_code == 202
        assert client.get(f"/api/jobs/{first.json()['id']}").json()["status"] == "queued"
        full = upload(client, media / "astronaut.png")
        assert full.status_code == 503 and "busy" in full.json()["detail"] and full.headers["retry-after"] == "10"
        release.set()
        jobs = [wait(client, response.json()["id"]) for response in (first, second)]
        assert [job["status"] for job in jobs] == ["done", "done"]
        assert jobs[0]["result"] == jobs[1]["result"]
        assert upload(client, media / "astronaut.png").status_code == 202


def test_concurrent_jobs_equal_detect(scorer, media, checkpoint, capsys, tmp_path):
    names = ["face.mp4", "astronaut.png", "face.mp4", "wall.png", "face.mp4", "astronaut.png"]
    expected = detect_json(capsys, checkpoint, *(media / name for name in sorted(set(names))))
    with make_client(scorer, tmp_path, workers=3, queue=3) as client, ThreadPoolExecutor(len(names)) as pool:
        responses = list(pool.map(lambda name: upload(client, media / name), names))
        assert [r.status_code for r in responses] == [202] * len(names)
        jobs = list(pool.map(lambda r: wait(client, r.json()["id"]), responses))
        for name, job in zip(names, jobs, strict=True):
            assert job["status"] == "done" and without_path(job["result"]) == without_path(expected[name])
        assert client.get("/health").json()["jobs"]["done"] == len(names)


def test_results_expire_and_foreign_hosts_are_refused(scorer, media, tmp_path):
    with make_client(scorer, tmp_path, keep_minutes=1) as client:
        job = wait(client, upload(client, media / "astronaut.png").json()["id"])
        manager = client.app.state.manager
        assert manager.sweep(now=time.time() + 30) == 0
        assert manager.sweep(now=time.time() + 61) == 1
        assert client.get(f"/api/jobs/{job['id']}").status_code == 404
        assert not (manager.root / job["id"]).exists()
        assert client.get("/health", headers={"host": "attacker.example"}).status_code == 400
        page = client.get("/")
        assert page.status_code == 200 and "/static/app.js" in page.text
        assert client.get("/static/app.js").status_code == 200
        assert client.get("/api/models").json()["models"][0]["name"] == "tiny"
    assert not manager.root.exists(), "stopping the app deletes every upload and result"


def test_cli_refuses_a_bad_checkpoint_in_one_line(tmp_path, capsys):
    (tmp_path / "notes.safetensors").write_text("not a checkpoint")
    assert main(["serve", "--checkpoint", str(tmp_path / "notes.safetensors")]) == 2
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("recce serve: ") and "notes.safetensors" in out
