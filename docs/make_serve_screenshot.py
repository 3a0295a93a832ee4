"""Make docs/serve.png, the README's picture of `recce serve`: the test astronaut video on the demo checkpoint.

    python docs/make_serve_screenshot.py recce-demo/recce-demo.safetensors

Needs Debian's chromium and chromium-driver and selenium (the test extra), like tests/test_serve_browser.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.media import write_face_video  # noqa: E402
from tests.test_serve_browser import CHROMEDRIVER, CHROMIUM, FLAGS  # noqa: E402


def main(checkpoint: str, out: Path = Path(__file__).parent / "serve.png") -> None:
    work = Path(tempfile.mkdtemp(prefix="serve-shot-"))
    video = work / "astronaut.mp4"
    write_face_video(video, n_frames=60, absent=range(36, 44))
    command = [sys.executable, "-m", "recce", "serve", "--checkpoint", checkpoint, "--port", "0", "--frames", "24"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = next(m.group(1) for line in server.stdout if (m := re.search(r"ready on (http://\S+/)", line)))
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={work / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    try:
        driver.get(url)
        wait = WebDriverWait(driver, 300, poll_frequency=0.3)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"))
        driver.find_element(By.ID, "files").send_keys(str(video))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".job[data-verdict] img.panel"))
        wait.until(lambda d: d.execute_script("return [...document.images].every(i => i.complete)"))
        driver.save_screenshot(str(out))
        shot = Image.open(out).convert("RGB")  # 256 colours keep the PNG near 200 KB
        shot.quantize(256, Image.Quantize.FASTOCTREE, dither=Image.Dither.FLOYDSTEINBERG).save(out, optimize=True)
        print(f"wrote {out}")
    finally:
        driver.quit()
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main(sys.argv[1])
