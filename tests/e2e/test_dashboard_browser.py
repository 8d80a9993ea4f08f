"""The dashboard in a real headless Chromium (Debian's, driven by its chromedriver) over loopback.

The page polls the API about once a second; every wait here is a bounded poll of the page
(at most ``WAIT`` seconds), never a sleep. ``MAILHOST_SCREENSHOTS=1`` writes the screenshots
to ``docs/img/`` for the README; otherwise they go to the test's temporary directory.
"""

from __future__ import annotations

import os
import shutil
import smtplib
import struct
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from mailhost.accounts import DEMO_ACCOUNTS
from mailhost.schedule import Schedule

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WAIT = 10.0
DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
WIDE = (1280, 800)
NARROW = (420, 900)
ALICE = "alice@example.org"
BOB = "bob@example.org"
FAR = "friend@elsewhere.example"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    f"--window-size={WIDE[0]},{WIDE[1]}",
]


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One headless Chromium for the module, with a fresh profile directory."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (Debian package chromium)")
    if not CHROMEDRIVER.exists():
        pytest.skip(f"{CHROMEDRIVER} is missing (Debian package chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=str(CHROMEDRIVER))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(browser: Any, start_server: Any) -> Any:
    """A factory: start a server with the given overrides and load its dashboard."""

    def load(**overrides: Any) -> Any:
        server = start_server(**overrides)
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        browser.get(server.api.removesuffix("/api") + "/")
        wait_for(browser, lambda d: d.find_element("css selector", "body[data-ready]"))
        browser.get_log("browser")  # start each test with an empty console
        return server

    return load


def wait_for(driver: Any, condition: Any) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT, poll_frequency=0.05).until(condition)


def css(driver: Any, selector: str) -> Any:
    return driver.find_element("css selector", selector)


def newest_decision(driver: Any) -> str:
    items = driver.find_elements("css selector", "#feed > li")
    return items[0].text if items else ""


def relay(server: Any, source: str, sender: str = ALICE) -> None:
    client = server.smtp(source)
    try:
        client.sendmail(sender, [FAR], f"Subject: from {source}\r\n\r\nhello\r\n")
    finally:
        client.quit()


def set_viewport(driver: Any, size: tuple[int, int]) -> None:
    metrics = {"width": size[0], "height": size[1], "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)


def png_size(path: Path) -> tuple[int, int]:
    with open(path, "rb") as f:
        header = f.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    return width, height


def test_page_shows_both_schemes_switched_on(page, browser):
    """On load both scheme switches read on, and the console stays free of errors."""
    page()
    for key in ("smtp-auth", "smtp-after-pop"):
        assert css(browser, f"#scheme-{key}-switch").get_attribute("aria-checked") == "true"
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []


def test_pop_login_appears_as_a_row(page, browser):
    """A POP3 login from 127.0.0.2 shows up as that IP's row with its account."""
    server = page()
    server.pop_login("127.0.0.2")
    row = wait_for(browser, lambda d: css(d, '#logins tr[data-ip="127.0.0.2"]'))
    assert ALICE in row.text
    assert "left" in row.text


def test_relay_allowed_only_by_smtp_after_pop_is_flagged_in_words(page, browser):
    """A relay that only SMTP-after-POP allowed carries the shared-IP warning text."""
    server = page()
    server.pop_login("127.0.0.2")
    relay(server, "127.0.0.2", sender="anyone@spam.example")
    wait_for(browser, lambda d: "127.0.0.2" in newest_decision(d))
    text = newest_decision(browser)
    assert "Allowed" in text
    assert "SMTP-after-POP" in text
    assert "anyone at this IP could have sent this" in text


def test_switching_smtp_after_pop_off_refuses_the_next_relay(page, browser):
    """Turning SMTP-after-POP off on the page makes the next relay from the IP a 550 in the feed."""
    server = page()
    server.pop_login("127.0.0.2")
    wait_for(browser, lambda d: css(d, '#logins tr[data-ip="127.0.0.2"]'))
    switch = css(browser, "#scheme-smtp-after-pop-switch")
    switch.click()
    wait_for(browser, lambda d: switch.get_attribute("aria-checked") == "false")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        relay(server, "127.0.0.2")
    assert refused.value.recipients[FAR][0] == 550
    wait_for(browser, lambda d: "127.0.0.2" in newest_decision(d))
    text = newest_decision(browser)
    assert "Refused" in text
    assert "550" in text
    assert "relaying denied" in text
    assert "anyone at this IP" not in text


def test_advance_button_moves_the_server_clock(page, browser):
    """The +10 min button moves the server clock ten minutes on."""
    server = page()
    before = server.service.provider.now()
    css(browser, 'button[data-advance="600"]').click()
    wait_for(browser, lambda d: server.service.provider.now() - before >= timedelta(minutes=10))


def test_narrow_window_needs_no_horizontal_scrolling(page, browser):
    """At 420 px wide the page fits its width: no sideways scrolling."""
    server = page()
    server.pop_login("127.0.0.2")
    relay(server, "127.0.0.2")
    wait_for(browser, lambda d: "127.0.0.2" in newest_decision(d))
    set_viewport(browser, NARROW)
    width = browser.execute_script("return document.documentElement.scrollWidth")
    assert width <= NARROW[0]


def test_screenshots_at_wide_and_narrow_sizes(page, browser, tmp_path):
    """A busy dashboard is captured at 1280x800 and 420x900."""
    cutover = datetime(2013, 9, 2, tzinfo=UTC)
    server = page(smtp_after_pop=Schedule.until(cutover))
    server.pop_login("127.0.0.4", BOB)
    submission = server.smtp("127.0.0.5", role="submission")
    submission.login(BOB, DEMO_ACCOUNTS[BOB])
    for to, subject in ((ALICE, "lunch?"), (FAR, "minutes of the meeting")):
        submission.sendmail(BOB, [to], f"Subject: {subject}\r\nFrom: Bob <{BOB}>\r\n\r\nx\r\n")
    submission.quit()
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        relay(server, "127.0.0.3", sender=BOB)
    server.pop_login("127.0.0.2")
    relay(server, "127.0.0.2", sender="anyone@spam.example")
    wait_for(browser, lambda d: len(d.find_elements("css selector", "#feed > li")) >= 4)
    wait_for(browser, lambda d: "Outbox (relayed, never sent on) (2)" in css(d, "#boxes").text)
    folder = DOCS_IMG if os.environ.get("MAILHOST_SCREENSHOTS") == "1" else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    for size, name in ((WIDE, "dashboard.png"), (NARROW, "dashboard-narrow.png")):
        set_viewport(browser, size)
        browser.execute_script("window.scrollTo(0, 0)")
        shot = tmp_path / f"partial-{name}"
        assert browser.save_screenshot(str(shot))
        assert png_size(shot) == size
        shutil.move(shot, folder / name)


def test_token_is_asked_for_once_and_then_used(browser, start_server):
    """With --api-token the page asks for the token, then goes live with it."""
    server = start_server(api_token="s3cret")
    browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    browser.get(server.api.removesuffix("/api") + "/")
    field = wait_for(
        browser, lambda d: css(d, "#token-input").is_displayed() and css(d, "#token-input")
    )
    field.send_keys("s3cret")
    css(browser, "#token-form button").click()
    wait_for(browser, lambda d: css(d, "body[data-ready]"))
    assert not css(browser, "#token-panel").is_displayed()
