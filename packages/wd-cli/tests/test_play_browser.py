"""`wd play` in a real browser: Debian's headless Chromium, driven by Selenium through chromium-driver, against
the server on the tiny pipeline. The page streams frames, a held arrow key changes the action row and the
frames after it, and a task run from the form (an upload, a box dragged on its first frame) plays its result."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait
from wd_data import write_video

from wd_cli.play.player import DriveOptions
from wd_cli.play.server import PlayServer, address, bind, serve

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if CHROMIUM is None or CHROMEDRIVER is None:
    # CI installs Debian's chromium and chromium-driver (.ci/run): there a missing browser is a failure.
    if os.environ.get("CI"):
        raise RuntimeError("the browser test needs Debian's chromium and chromium-driver (apt-get install chromium "
                           "chromium-driver)")
    pytest.skip("needs Debian's chromium and chromium-driver", allow_module_level=True)

# Without the background-networking flags Chromium's own connections are refused on a closed network and it
# stalls; a fresh profile per test keeps runs apart.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1200,1600")
TIMEOUT = 90  # seconds: generous, the machine may be busy; every wait returns as soon as its condition holds


@pytest.fixture
def page_url(tiny_pipeline, tmp_path: Path):
    """The server on the tiny pipeline, in a thread, on a free localhost port."""
    listener = bind("127.0.0.1", 0)
    started = threading.Event()
    servers = []

    def ready(server) -> None:
        servers.append(server)
        started.set()

    app = PlayServer(tiny_pipeline, tmp_path / "out", DriveOptions(fps=10.0)).app()
    thread = threading.Thread(target=serve, args=(app, listener, ready), daemon=True)
    thread.start()
    assert started.wait(30)
    yield address(listener)
    servers[0].should_exit = True
    thread.join(30)


@pytest.fixture
def browser(tmp_path: Path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(TIMEOUT)
    yield driver
    driver.quit()


def text(driver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def frame_index(driver) -> int:
    shown = text(driver, "frame-index")
    return int(shown) if shown.isdigit() else -1


def test_hold_a_key_to_turn_then_run_a_task_from_the_form(page_url: str, browser, tmp_path: Path) -> None:
    wait = WebDriverWait(browser, TIMEOUT, poll_frequency=0.05)
    browser.get(page_url)
    wait.until(lambda driver: frame_index(driver) >= 3)  # frames stream in
    assert text(browser, "action-yaw") == "0.000"

    ActionChains(browser).key_down(Keys.ARROW_LEFT).perform()
    pressed_at = frame_index(browser)
    wait.until(lambda driver: text(driver, "action-yaw") == "0.060")  # the action row of the frame shown
    assert frame_index(browser) > pressed_at
    assert text(browser, "held").startswith("0.060")
    ActionChains(browser).key_up(Keys.ARROW_LEFT).perform()
    wait.until(lambda driver: text(driver, "action-yaw") == "0.000")
    assert float(text(browser, "fps")) > 0

    # Inpainting from the form: upload a video, drag a box on its first frame.
    Select(browser.find_element(By.ID, "task")).select_by_value("inpaint")
    clip = write_video(tmp_path / "clip.mp4", np.random.default_rng(0).integers(0, 255, (6, 32, 32, 3), np.uint8), 4)
    browser.find_element(By.ID, "video").send_keys(str(clip))
    canvas = browser.find_element(By.ID, "box-canvas")
    wait.until(lambda driver: text(driver, "box-text") == "no box")  # its first frame is drawn, 8x
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
    (ActionChains(browser).move_to_element_with_offset(canvas, -60, -60).click_and_hold()
     .move_by_offset(50, 50).release().perform())
    wait.until(lambda driver: text(driver, "box-text").startswith("box "))
    steps = browser.find_element(By.ID, "steps")
    steps.send_keys("2")
    browser.find_element(By.ID, "run-task").click()
    wait.until(lambda driver: text(driver, "progress-text") == "inpaint done")
    wait.until(lambda driver: driver.find_element(By.ID, "result").is_displayed())
    first = text(browser, "result-frame")
    wait.until(lambda driver: text(driver, "result-frame") != first)  # the result plays
    assert browser.execute_script("return document.getElementById('result-canvas').width") > 8
    assert text(browser, "messages") == ""
