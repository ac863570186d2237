"""The live page in a real headless browser (DESIGN §13): Debian's chromium and chromedriver,
passed by path, so nothing downloads. It sends messages and waits until their hops appear.

Without /usr/bin/chromium or /usr/bin/chromedriver the test is skipped, saying so, except
on CI (CI=true), where it fails: `.ci/run` installs both. The screenshot is kept under
the test's tmp_path and, if ARTIFACTS_DIR is set, there too.
"""

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from agentserver.web import HttpServer
from tests.ask_organisms import City, Summary, Task
from tests.organisms import Echo
from tests.support import HANG_GUARD, envelope, listener, organism, settle
from tests.test_calls import CALCULATOR, PLANNER, WEATHER
from tests.test_http import with_http

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PAGE_WAIT = 60  # seconds: generous, a guard against hangs only

pytestmark = pytest.mark.subprocess


def _browser():
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("the selenium package (pip install -e '.[test]')")
    if missing:
        reason = f"the live-page browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + ": on CI it must run")
        pytest.skip(reason)
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1500,950", "--hide-scrollbars"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))


def _keep(driver, tmp_path: Path, name: str) -> Path:
    shot = tmp_path / name
    driver.save_screenshot(str(shot))
    artifacts = os.environ.get("ARTIFACTS_DIR")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(artifacts) / name)
    return shot


async def test_the_live_page_shows_a_conversation_s_hops_as_they_happen(start, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    pump = await start(with_http(organism(PLANNER, CALCULATOR, WEATHER, listener("echo", "Echo", "echo"))))
    await settle(pump)
    async with HttpServer(pump, pump.config.http) as http:
        driver = await asyncio.to_thread(_browser)
        try:
            await asyncio.to_thread(driver.get, http.url + "/")
            await asyncio.to_thread(WebDriverWait(driver, PAGE_WAIT).until,
                                    lambda d: d.find_element(By.ID, "link").text == "live")
            async with pump.client("tester") as client:
                thread_id = await client.send(Task(a=2, b=3, city="Oslo"), to="planner")
                reply = await asyncio.wait_for(client.receive(), HANG_GUARD)
                assert reply.payload == Summary(total=5, weather="sunny in Oslo")

                hops = f'.hop[data-conversation="{thread_id}"]'
                rows = await asyncio.to_thread(WebDriverWait(driver, PAGE_WAIT).until,
                                               lambda d: (found := d.find_elements(By.CSS_SELECTOR, hops)) and
                                               len(found) >= 6 and found)  # Task, Add, City, Sum, Forecast, Summary
                routes = [row.find_element(By.CLASS_NAME, "route").text for row in rows]
                assert "tester → planner <Task>" in routes and "planner → calculator <Add>" in routes
                assert "weather → planner <Forecast>" in routes and "planner → tester <Summary>" in routes
                assert driver.find_elements(By.CSS_SELECTOR, f'.conv[data-conversation="{thread_id}"]')

                # a hostile payload is shown as text, and a refusal as a failed hop (a dead letter)
                hostile = await client.send(Echo(text='<img src=x onerror="document.title=1">'), to="echo")
                await asyncio.wait_for(client.receive(), HANG_GUARD)
                refused = "0d1a7b8c-2222-4333-8444-555555555555"
                await pump.inject(envelope("<City><Nme>x</Nme></City>", to="weather", thread=refused), from_id="tester")
                await asyncio.wait_for(client.receive(), HANG_GUARD)
                await settle(pump)

            await asyncio.to_thread(WebDriverWait(driver, PAGE_WAIT).until, lambda d: d.find_elements(
                By.CSS_SELECTOR, f'.conv[data-conversation="{refused}"] .badge.err'))
            card = driver.find_element(By.CSS_SELECTOR, f'.conv[data-conversation="{hostile}"]')
            await asyncio.to_thread(card.click)
            preview = await asyncio.to_thread(WebDriverWait(driver, PAGE_WAIT).until, lambda d: d.find_element(
                By.CSS_SELECTOR, f'.hop[data-conversation="{hostile}"] .preview'))
            assert '<Text>&lt;img src=x onerror="document.title=1"&gt;</Text>' in preview.text  # the XML, as text
            assert not driver.find_elements(By.CSS_SELECTOR, "#detail img") and driver.title != "1"

            await asyncio.to_thread(driver.find_element(By.CSS_SELECTOR, f'.conv[data-conversation="{thread_id}"]').click)
            await asyncio.to_thread(WebDriverWait(driver, PAGE_WAIT).until, lambda d: d.find_elements(
                By.CSS_SELECTOR, f'#detail .hop[data-conversation="{thread_id}"]'))
            shot = await asyncio.to_thread(_keep, driver, tmp_path, "live-page.png")
            assert shot.stat().st_size > 10_000
        finally:
            await asyncio.to_thread(driver.quit)
    assert City  # the payload the refused envelope misspells
