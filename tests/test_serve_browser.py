"""End to end: `python -m recce serve` in a subprocess, through its HTTP API and in headless Chromium (Selenium).

The browser test uses the distribution's chromium and chromedriver (Debian: `apt-get install chromium
chromium-driver`), so nothing is downloaded at run time; it saves the page's screenshot in its tmp folder.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
from media import write_face_video

from recce import checkpoints
from recce.detectors import Preprocess
from recce.detectors.recce import Recce

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = "/usr/bin/chromedriver"

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1400",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The URL of a `recce serve` started on a free port; its temporary folder must be empty once it stopped."""
    tmp_path = tmp_path_factory.mktemp("serve")
    checkpoint = checkpoints.save(Recce(preprocess=Preprocess(64)).eval(), tmp_path / "tiny.safetensors")
    temp = tmp_path / "server-tmp"
    temp.mkdir()
    command = [sys.executable, "-m", "recce", "serve", "--checkpoint", str(checkpoint), "--port", "0"]
    command += ["--face-detector", "haar", "--frames", "8", "--batch-size", "4"]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "TMPDIR": str(temp)},
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    output = []
    try:
        while True:
            line = lines.get(timeout=120)
            output.append(line)
            if match := re.search(r"ready on (http://127\.0\.0\.1:\d+/)", line):
                break
        yield match.group(1)
    except queue.Empty:
        pytest.fail("recce serve did not print its URL:\n" + "".join(output))
    finally:
        process.terminate()
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
    assert not list(temp.iterdir()), "uploads and results are deleted when the server stops"


@pytest.fixture
def browser(tmp_path):
    if CHROMIUM is None or not os.access(CHROMEDRIVER, os.X_OK):
        pytest.skip("needs Chromium and its driver from the distribution (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install -e '.[test]')")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def requested_urls(driver) -> list[str]:
    """Every URL the browser requested, from Chromium's DevTools network log."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def test_server_prints_its_url_and_scores_an_upload(server, tmp_path):
    video = tmp_path / "clip.mp4"
    write_face_video(video, n_frames=6)
    with httpx.Client(base_url=server, timeout=60) as client:
        assert client.get("/health").json()["status"] == "ok"
        assert client.get("/health", headers={"host": "rebound.example"}).status_code == 400
        with video.open("rb") as file:
            response = client.post("/api/jobs", files={"file": ("clip.mp4", file)})
        assert response.status_code == 202
        deadline = time.monotonic() + 120
        while (job := client.get(response.json()["url"]).json())["status"] not in ("done", "failed"):
            assert time.monotonic() < deadline, job
            time.sleep(0.1)
    assert job["status"] == "done" and job["result"]["frames_with_face"] == 6 and job["panels"]


@pytest.mark.slow
def test_page_checks_a_video_in_chromium(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    video = tmp_path / "astronaut.mp4"
    write_face_video(video, n_frames=12, absent=(11,))
    (tmp_path / "notes.txt").write_text("not a video")
    browser.get(server)
    wait = WebDriverWait(browser, 180, poll_frequency=0.2)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"))
    browser.find_element(By.ID, "files").send_keys(str(video))
    card = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".job[data-verdict]"))
    verdict = card.find_element(By.CLASS_NAME, "verdict").text
    assert verdict in ("FAKE", "real")
    assert "P(fake) = " in card.find_element(By.CLASS_NAME, "summary").text
    assert "tiny.safetensors" in card.find_element(By.CLASS_NAME, "provenance").text
    plot = card.find_element(By.CSS_SELECTOR, "svg.timeline")
    assert len(plot.find_elements(By.CSS_SELECTOR, "circle.dot")) == 7  # 8 frames sampled, the last has no face
    assert len(plot.find_elements(By.CSS_SELECTOR, "path.noface")) == 1
    panel = card.find_element(By.CSS_SELECTOR, "img.panel")
    wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", panel) > 0)
    assert card.find_element(By.CSS_SELECTOR, "a.json").get_attribute("href").endswith("/result.json")

    browser.find_element(By.ID, "files").send_keys(str(tmp_path / "notes.txt"))
    message = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".job:first-child .message"))
    assert message.text.startswith("notes.txt: not an image or video")

    shot = tmp_path / "artefacts" / "serve-page.png"
    shot.parent.mkdir()
    browser.execute_script("window.scrollTo(0, 0)")
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
    urls = [url for url in requested_urls(browser) if not url.startswith(("chrome:", "data:", "blob:"))]
    assert urls and all(url.startswith(server) for url in urls), f"the page must only talk to its server: {urls}"
