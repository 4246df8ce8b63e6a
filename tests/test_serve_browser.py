"""The web page in a real browser: Debian's chromium and chromium-driver, driven by selenium (no browser download).
It edits a fact through the page, sees the answer change and the form cleared, undoes it (asked to confirm), sees the
base answer again and the undone edit greyed in the history, makes it again from there; the chart has its axes and
the favicon is served."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest
from test_serve import FACT, TOKEN, Server, make_store

from sola.serve import open_service

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(CHROMIUM is None or DRIVER is None, reason="Debian's chromium and chromium-driver are "
                                "not installed (apt-get install chromium chromium-driver; .ci/run installs them)")


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1100,1300"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def test_edit_ask_and_undo_through_the_page(tiny_dir, tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    store = make_store(tiny_dir, tmp_path / "store")
    server = Server(open_service(store, str(tiny_dir("llama"))))
    wait = WebDriverWait(browser, 120)
    try:
        browser.get(server.url + "/")
        wait.until(EC.text_to_be_present_in_element((By.ID, "status"), "0 live edits"))
        browser.find_element(By.ID, "ask-prompt").send_keys(FACT[0])
        browser.find_element(By.ID, "ask-button").click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "route"), "base model"))
        base = browser.find_element(By.ID, "answer").text
        assert base == browser.find_element(By.ID, "base-answer").text and base != FACT[1]

        browser.find_element(By.ID, "token").send_keys(TOKEN)
        browser.find_element(By.ID, "edit-prompt").send_keys(FACT[0])
        browser.find_element(By.ID, "edit-target").send_keys(FACT[1])
        browser.find_element(By.ID, "edit-button").click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "progress"), "committed e1"))
        wait.until(EC.text_to_be_present_in_element((By.ID, "route"), "answered by edit e1"))
        fields = [browser.find_element(By.ID, f).get_attribute("value") for f in ("edit-prompt", "edit-target")]
        assert fields == ["", ""]  # the form is cleared for the next fact
        assert browser.find_element(By.ID, "answer").text == FACT[1]
        assert browser.find_element(By.ID, "base-answer").text == base
        item = browser.find_element(By.CSS_SELECTOR, "#history li[data-edit='e1']")
        assert FACT[1] in item.text
        shots = Path(os.environ.get("SOLA_SCREENSHOTS", tmp_path / "screenshots"))
        shots.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(shots / "edited.png"))

        def click(selector: str) -> None:  # the list is drawn again on every change: find the button anew
            wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "#history li[data-edit='e1'] " + selector))).click()

        click("button.undo")  # asks first: nothing is undone yet
        click("button.cancel")
        click("button.undo")
        assert [e.id for e in server.service.reader.edits()] == ["e1"]
        click("button.confirm")
        wait.until(EC.text_to_be_present_in_element((By.ID, "progress"), "rolled back e1"))
        wait.until(EC.text_to_be_present_in_element((By.ID, "route"), "base model"))
        assert browser.find_element(By.ID, "answer").text == base
        wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "#history li.rolled-back[data-edit='e1']"),
                                                    "rolled back"))  # kept in the history, greyed
        assert FACT[1] in browser.find_element(By.CSS_SELECTOR, "#history li[data-edit='e1']").text
        browser.save_screenshot(str(shots / "undone.png"))
        chart = browser.find_element(By.ID, "chart")
        assert chart.get_attribute("data-axes") == "time,live edits,routed share"
        assert "live edits over time" in chart.get_attribute("aria-label")
        click("button.redo")  # the undo taken back: the fact made again, as a new edit
        wait.until(EC.text_to_be_present_in_element((By.ID, "progress"), "committed e2"))
        wait.until(EC.text_to_be_present_in_element((By.ID, "route"), "answered by edit e2"))
        assert browser.find_element(By.ID, "answer").text == FACT[1]
        assert [e.id for e in server.service.reader.edits()] == ["e2"]
        icon = httpx.get(server.url + "/favicon.ico")
        assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
        assert (shots / "edited.png").stat().st_size > 1000
        # a write without the token is refused on the page too, and changes nothing
        browser.execute_script("document.getElementById('token').value = ''")
        browser.find_element(By.ID, "edit-prompt").send_keys(FACT[0])
        browser.find_element(By.ID, "edit-target").send_keys("John Doe")
        browser.find_element(By.ID, "edit-button").click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "error"), "token"))
        assert [e.id for e in server.service.reader.edits()] == ["e2"]
    finally:
        server.stop()
