"""The web console in a real headless Chromium (Debian's, driven by Selenium through
chromedriver), against a real lab, as an admin uses it from one browser: log in on one node,
see both nodes in their colours, swap from the menu after a confirmation that says what will
happen, watch the states change colour, follow the module log, download a snapshot."""

from __future__ import annotations

import json
import os
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.helpers.api import console_password
from tests.helpers.lab import LabCluster
from tests.helpers.mountproc import wait_for

pytestmark = pytest.mark.root

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "images"


@pytest.fixture
def browser(workspace: Path) -> Iterator[tuple[WebDriver, Path]]:
    downloads = workspace / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--ignore-certificate-errors",  # the node's own certificate, as an admin accepts it once
        "--window-size=1100,860",
        f"--user-data-dir={workspace / 'profile'}",
    ):
        options.add_argument(argument)
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver, downloads
    finally:
        driver.quit()


BADGES = """
const found = {};
for (const card of document.querySelectorAll('.node[data-module="demo"]')) {
  const badge = card.querySelector('.state');
  const colour = [...badge.classList].find((c) => c !== 'state');
  found[card.dataset.node] = [badge.dataset.state, colour];
}
return found;
"""


def _badges(driver: WebDriver) -> dict[str, tuple[str, str]]:
    """node -> (state, colour class) as the page shows them for module demo (read in one go:
    the page redraws itself every two seconds)."""
    found = driver.execute_script(BADGES)
    return {node: (state, colour) for node, (state, colour) in found.items()}


def _click(driver: WebDriver, selector: str) -> None:
    """Click what the page shows now; a redraw between finding and clicking finds it again."""
    for _ in range(10):
        try:
            driver.find_element(By.CSS_SELECTOR, selector).click()
            return
        except StaleElementReferenceException:
            continue
    raise AssertionError(f"{selector} kept being redrawn")


def _shot(driver: WebDriver, name: str) -> None:
    """The docs' screenshots are taken by this test (kept when TANDEM_SCREENSHOTS is set)."""
    if os.environ.get("TANDEM_SCREENSHOTS"):
        SHOTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(SHOTS / f"console-{name}.png"))


def test_an_admin_logs_in_swaps_follows_the_log_and_takes_a_snapshot(
    failover_lab: LabCluster, browser: tuple[WebDriver, Path]
) -> None:
    lab = failover_lab
    driver, downloads = browser
    ports = json.loads((lab.directory / "lab.json").read_text())["console_ports"]
    driver.get(f"https://127.0.0.1:{ports['b']}/")
    wait_for(lambda: driver.find_element(By.ID, "login").is_displayed(), 20, "the login form")
    assert not driver.find_element(By.ID, "cluster").is_displayed()
    driver.find_element(By.ID, "user").send_keys("admin")
    driver.find_element(By.ID, "password").send_keys("wrong password")
    driver.find_element(By.ID, "login-button").click()
    wait_for(lambda: driver.find_element(By.ID, "login-error").text, 20, "the refusal")
    assert "wrong user or password" in driver.find_element(By.ID, "login-error").text
    _shot(driver, "login")
    password = driver.find_element(By.ID, "password")
    password.clear()
    password.send_keys(console_password(lab))
    driver.find_element(By.ID, "login-button").click()
    # both nodes, from one browser, in their colours: PRIM and an in-sync SECOND are green
    wait_for(lambda: len(_badges(driver)) == 2, 30, "both nodes on the page")
    wait_for(
        lambda: _badges(driver) == {"a": ("PRIM", "ok"), "b": ("SECOND", "ok")}, 30, "a serving"
    )
    assert "admin (admin) on node b" in driver.find_element(By.ID, "who").text
    _shot(driver, "cluster")

    # swap from node a's menu: the confirmation says what will happen; Cancel does nothing
    _click(driver, '.node[data-node="a"] button[data-command="swap"]')
    dialog = driver.find_element(By.ID, "confirm")
    wait_for(dialog.is_displayed, 10, "the confirmation")
    assert "hands over" in driver.find_element(By.ID, "confirm-text").text
    _shot(driver, "confirm")
    driver.find_element(By.ID, "confirm-cancel").click()
    time.sleep(2.5)  # a refresh or more
    assert _badges(driver)["a"] == ("PRIM", "ok")
    _click(driver, '.node[data-node="a"] button[data-command="swap"]')
    wait_for(dialog.is_displayed, 10, "the confirmation")
    driver.find_element(By.ID, "confirm-ok").click()
    seen: set[tuple[str, str]] = set()

    def swapped() -> bool:
        badges = _badges(driver)
        seen.update(badges.values())
        return badges == {"a": ("SECOND", "ok"), "b": ("PRIM", "ok")}

    wait_for(swapped, 60, "b serving, a in sync")
    assert "swap: done on a" in driver.find_element(By.ID, "notice").get_attribute("textContent")

    # the module log of node a, followed: a restart of a shows up without reloading
    _click(driver, '.node[data-node="a"] button[data-log="module"]')
    lines = driver.find_element(By.ID, "log-lines")
    wait_for(lambda: "swapped: the peer serves" in lines.text, 20, "the log with the swap")
    assert driver.find_element(By.ID, "log-title").text == "module log of demo on a"
    _click(driver, '.node[data-node="a"] button[data-command="restart"]')
    wait_for(dialog.is_displayed, 10, "the confirmation")
    driver.find_element(By.ID, "confirm-ok").click()
    wait_for(lambda: "SECOND -> STOP" in lines.text, 30, "the restart in the followed log")
    _shot(driver, "log")
    wait_for(lambda: _badges(driver).get("a") == ("SECOND", "ok"), 60, "a back in sync")

    # a snapshot of node a, downloaded through node b's console
    _click(driver, 'a.snapshot[data-snapshot="a"]')
    wait_for(
        lambda: any(p.suffix == ".zip" for p in downloads.iterdir()), 60, "the snapshot download"
    )
    (archive_path,) = [p for p in downloads.iterdir() if p.suffix == ".zip"]
    assert archive_path.name.startswith("tandem-snapshot-a-")
    secret = (lab.directory / "nodes" / "a" / "etc" / "secret").read_bytes().strip()
    with zipfile.ZipFile(archive_path) as archive:
        names = archive.namelist()
        everything = b"".join(archive.read(name) for name in names)
    assert any(name.endswith("modules/demo/module.log") for name in names)
    assert b"swapped: the peer serves" in everything
    assert secret not in everything

    # logging out ends it: the page asks for the password again
    driver.find_element(By.ID, "logout").click()
    wait_for(lambda: driver.find_element(By.ID, "login").is_displayed(), 20, "the login form")
    driver.refresh()
    wait_for(lambda: driver.find_element(By.ID, "login").is_displayed(), 20, "still logged out")
