"""`jasco-app` end to end in a real headless browser (Debian's chromium + chromedriver, Selenium).

The app serves an exported debug model in a subprocess on a free port; the browser fills the page,
clicks Generate and reads the `<audio>` element's duration. Set `JASCO_APP_SCREENSHOT=PATH` to also
save the page's screenshot there (docs/images/app.png is made this way); it is always saved in tmp_path.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from helpers_inference import debug_model, export_model
from helpers_training import free_port

from jasco.audio.io import audio_write

ROOT = Path(__file__).resolve().parents[1]
BROWSER_FILES = {"chromium": "chromium", "chromedriver": "chromium-driver"}  # executable -> Debian package
START_TIMEOUT = 120.0  # seconds for the server to answer (imports gradio and torch, loads the model)
GENERATE_TIMEOUT = 120.0  # seconds for one generation on a loaded 2-core machine
WINDOW = (1400, 1000)


def _executables() -> dict[str, str]:
    """The browser's executables, or a skip (non-root dev machine) / failure (root: CI installs them)."""
    found = {name: shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").is_file() else None)
             for name in BROWSER_FILES}
    missing = [BROWSER_FILES[name] for name, path in found.items() if path is None]
    if missing:
        message = f"Debian packages {' '.join(missing)} missing (make system-deps as root installs them)"
        if os.geteuid() == 0:
            pytest.fail(message)  # CI runs as root and installs them: their absence is a bug there
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`python -m jasco.app` serving an exported debug model; yields its URL."""
    folder = export_model(debug_model(seed=4), tmp_path_factory.mktemp("model"))
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "app.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "jasco.app", "--model", str(folder), "--port", str(port),
                                 "--device", "cpu"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"jasco-app exited with status {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"jasco-app did not answer on {url} within {START_TIMEOUT:g} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
        assert proc.poll() is None, "the server stopped while serving"
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def browser(server):
    """A headless chromium on the app's page."""
    paths = _executables()
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = paths["chromium"]
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=paths["chromedriver"]))
    try:
        driver.get(server)
        wait_for(driver, "the page", lambda: driver.find_elements("css selector", "#generate"), 60)
        yield driver
    finally:
        driver.quit()


def wait_for(driver, what: str, condition, timeout: float = GENERATE_TIMEOUT):
    """Poll `condition()` until truthy; fail naming `what` with the page's #error text."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    errors = driver.find_elements("css selector", "div#error")
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}; #error: {errors[0].text if errors else None!r}")


def fill(driver, selector: str, text: str) -> None:
    """Replace the text of the input at `selector` as a user would (select all, type, leave the field)."""
    from selenium.webdriver.common.keys import Keys

    field = driver.find_element("css selector", selector)
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(Keys.DELETE)
    field.send_keys(text)
    field.send_keys(Keys.TAB)


def audio_duration(driver) -> float | None:
    """Duration of the output `<audio>` once it has a playable source, else None."""
    return driver.execute_script(
        "const a = document.querySelector('#output-audio audio');"
        "return a && a.src && a.readyState >= 1 && isFinite(a.duration) ? a.duration : null;")


def error_text(driver) -> str:
    return driver.find_element("css selector", "div#error").text.strip()


def generate(driver, text: str, chords: str, duration: float) -> None:
    fill(driver, "#text textarea", text)
    fill(driver, "#chords textarea", chords)
    fill(driver, "div#duration input[type=number]", f"{duration:g}")
    driver.find_element("css selector", "#generate").click()


def test_generate_in_the_browser(browser, tmp_path):
    drums = torch.zeros(1, 32000 * 3)
    for start in range(0, drums.shape[-1], 8000):  # a click every 0.25 s, decaying
        drums[0, start:start + 2000] = (torch.rand(2000) * 2 - 1) * torch.linspace(0.8, 0.0, 2000)
    audio_write(tmp_path / "drums.wav", drums, 32000, normalize=False)
    browser.find_element("css selector", "#drums input[type=file]").send_keys(str(tmp_path / "drums.wav"))
    wait_for(browser, "the drum upload", lambda: ".wav" in browser.find_element("css selector", "#drums").text, 30)
    generate(browser, "funky bass with a synth lead", "C@0 Am@1 Db@2", 3.0)
    duration = wait_for(browser, "a playable audio source", lambda: audio_duration(browser))
    assert duration == pytest.approx(3.0, abs=0.02)
    assert error_text(browser) == ""
    assert browser.find_element("css selector", "#chords-check").text == "3 chord changes; Db → C#"
    plot = wait_for(browser, "the controls picture",
                    lambda: browser.find_elements("css selector", "#controls-plot img"), 30)
    assert plot[0].get_attribute("src")
    assert "3 s from" in browser.find_element("css selector", "#info").text
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(WINDOW[0], height + 40)
    shot = tmp_path / "app.png"
    assert browser.save_screenshot(str(shot)) and shot.read_bytes()[:4] == b"\x89PNG"
    if os.environ.get("JASCO_APP_SCREENSHOT"):
        from PIL import Image  # a matplotlib dependency

        target = Path(os.environ["JASCO_APP_SCREENSHOT"])
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(shot).convert("RGB").quantize(256).save(target, optimize=True)  # a palette: commit-sized
    browser.set_window_size(*WINDOW)


def test_bad_chords_show_an_error_and_the_page_keeps_working(browser):
    generate(browser, "lo-fi hip hop", "C@0 Hm@1", 3.0)
    message = wait_for(browser, "the #error message", lambda: error_text(browser))
    assert message == ("Error: chords: 'Hm' is not a chord label; write e.g. C, Am, F#m7, Bbmaj7, D/F#, A:min or N "
                       "(no chord).")
    assert "Traceback" not in browser.page_source
    assert audio_duration(browser) is None  # the previous piece is cleared
    generate(browser, "lo-fi hip hop", "C@0 G@4.5", 5.0)  # longer than the 4 s training segment: windows
    duration = wait_for(browser, "the second piece", lambda: audio_duration(browser))
    assert duration == pytest.approx(5.0, abs=0.02)
    assert error_text(browser) == ""
