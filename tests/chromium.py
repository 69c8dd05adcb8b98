"""Debian's headless Chromium for the browser tests and benchmarks: the system browser and
driver, with their paths given, and Selenium Manager (a binary that may go online) made
unable to run."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,1000",
)
# With the driver's path given, Selenium skips Selenium Manager (DriverFinder), and the browser's
# is given too; should a version call it anyway, it runs /bin/false and the driver fails to start
# (SE_OFFLINE and SE_AVOID_STATS: for a Selenium that ignores SE_MANAGER_PATH). SE_CHROMEDRIVER
# would replace the driver path given.
NO_MANAGER = {"SE_MANAGER_PATH": "/bin/false", "SE_OFFLINE": "true", "SE_AVOID_STATS": "true"}


def available() -> bool:
    return CHROMIUM.exists() and CHROMEDRIVER.exists()


@contextmanager
def chromium(profile: Path, logging: bool = False) -> Iterator:
    """A headless Chromium driver with its own profile folder; quit on leaving."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in (*ARGS, f"--user-data-dir={profile}"):
        opts.add_argument(arg)
    if logging:
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    saved = {k: os.environ.get(k) for k in (*NO_MANAGER, "SE_CHROMEDRIVER")}
    os.environ.update(NO_MANAGER)
    os.environ.pop("SE_CHROMEDRIVER", None)
    try:
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    try:
        yield driver
    finally:
        driver.quit()


def open_page(driver, url: str) -> None:
    """Load ``url`` and wait until the document is complete."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, 10).until(lambda d: d.execute_script("return document.readyState") == "complete")


def assert_clean(driver, allowed: str = "\0") -> None:
    """No console errors (but those mentioning ``allowed``), no alert, and no injected payload ran."""
    import pytest
    from selenium.common.exceptions import NoAlertPresentException

    logged = driver.get_log("browser")
    errors = [e for e in logged if e["level"] in ("SEVERE", "ERROR") and allowed not in e["message"]]
    assert errors == []
    try:
        text = driver.switch_to.alert.text
        pytest.fail(f"an alert opened: {text!r}")
    except NoAlertPresentException:
        pass
    assert driver.execute_script("return window.__pwned === undefined")


def keyboard_focus(driver, element) -> None:
    """Focus ``element`` as a keyboard user would. Chromium fires no focus events in a page that
    has not had the window's focus (headless, before any real input: Chromium 150 holds to this),
    so a Tab key press, real input, gives the page focus first; then ``element`` takes it."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    ActionChains(driver).send_keys(Keys.TAB).perform()
    driver.execute_script("arguments[0].focus()", element)
    assert driver.execute_script("return document.hasFocus() && document.activeElement === arguments[0]", element)
