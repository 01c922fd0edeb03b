"""/docs in headless Chromium on real Gunicorn: a model's predict operation, tried out as a
person would, answers 200 with the bundle's predictions, and the page loads nothing from
elsewhere."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pandas as pd
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from inference_app.config import DEFAULTS
from inference_app.core.bundle import load_bundle
from inference_app.demo import DEMO_VERSION, write_demo_bundles
from inference_app.http.v1 import example_request
from servers import REPO, Server, start_gunicorn, stop, wait_ready

pytestmark = pytest.mark.e2e

#: Debian's chromium and chromium-driver packages (.ci/run installs them); named explicitly
#: so that Selenium Manager, which would download a driver, never runs.
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
#: Seconds for the page to load, an element to appear, or a script or request to finish.
BROWSER_TIMEOUT = 30.0
#: An iris model (a NumPy matrix of floats) and penguins (a DataFrame with categories).
MODELS = ("iris", "penguins")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Gunicorn over the iris and penguins demo bundles and the repository's instance config."""
    instance = tmp_path_factory.mktemp("browser-instance")
    written = write_demo_bundles(instance / "models", names=MODELS)
    assert [entry.skipped for entry in written] == [None] * len(MODELS), written
    shutil.copy(REPO / "instance" / "config.py", instance / "config.py")
    server = start_gunicorn(instance, instance.parent / "browser-gunicorn.log", workers=1)
    try:
        wait_ready(server)
        yield server
    finally:
        stop(server)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    """Headless Chromium driven by chromedriver, with its own profile and console log."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        # Chromium's sandbox needs user namespaces that containers (and root) often lack.
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,2000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
        # No traffic of the browser's own: the test runs without network.
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    try:
        driver.set_page_load_timeout(BROWSER_TIMEOUT)
        driver.set_script_timeout(BROWSER_TIMEOUT)
        yield driver
    finally:
        driver.quit()


def wait(browser: WebDriver) -> WebDriverWait[WebDriver]:
    """A bounded wait of :data:`BROWSER_TIMEOUT` seconds."""
    return WebDriverWait(browser, BROWSER_TIMEOUT)


def open_operation(browser: WebDriver, server: Server, name: str) -> WebElement:
    """Open /docs and expand the predict operation of model ``name``; return its block."""
    browser.get(f"{server.url}/docs")
    block = wait(browser).until(
        lambda driver: driver.find_element(By.ID, f"operations-models-predict_{name}"),
        f"/docs shows no predict operation for {name}",
    )
    summary = block.find_element(By.CSS_SELECTOR, ".opblock-summary")
    assert f"/v1/models/{name}:predict" in summary.text
    block.find_element(By.CSS_SELECTOR, ".opblock-summary-control").click()
    wait(browser).until(
        lambda _: block.find_elements(By.CSS_SELECTOR, ".opblock-body"),
        f"the {name} operation did not expand",
    )
    return block


def try_it_out(browser: WebDriver, block: WebElement) -> None:
    """Put the operation in "Try it out" mode, as a person would.

    The server configures Swagger UI with ``tryItOutEnabled`` (``OPENAPI_SWAGGER_UI_CONFIG``),
    so an expanded operation is in that mode already and its button reads "Cancel"; with the
    setting off the button reads "Try it out" and is clicked.
    """
    button = block.find_element(By.CSS_SELECTOR, "button.try-out__btn")
    if DEFAULTS["OPENAPI_SWAGGER_UI_CONFIG"].get("tryItOutEnabled"):
        assert button.text == "Cancel"
    else:
        assert button.text == "Try it out"
        button.click()
    wait(browser).until(
        lambda _: block.find_elements(By.CSS_SELECTOR, "textarea.body-param__text"),
        "no editable request body after Try it out",
    )


def execute(browser: WebDriver, block: WebElement) -> tuple[str, Any]:
    """Click "Execute" and return the status code and the JSON body the page shows."""
    block.find_element(By.CSS_SELECTOR, "button.execute").click()
    response = wait(browser).until(
        lambda _: block.find_element(By.CSS_SELECTOR, ".live-responses-table .response"),
        "no response shown within the timeout",
    )
    status = response.find_element(By.CSS_SELECTOR, ".response-col_status").text
    body = response.find_element(By.CSS_SELECTOR, ".response-col_description pre code").text
    return status, json.loads(body)


def expected_predictions(server: Server, name: str, body: dict[str, Any]) -> list[Any]:
    """Predict the rows of ``body`` in process with the bundle the server loaded."""
    bundle = load_bundle(server.instance / "models" / name / DEMO_VERSION)
    frame = pd.DataFrame(body["instances"], columns=bundle.manifest.feature_names)
    rows = frame if bundle.manifest.layout == "frame" else frame.to_numpy(dtype="float64")
    predictions: list[Any] = bundle.estimator.predict(rows).tolist()
    return predictions


@pytest.mark.parametrize("name", MODELS)
def test_try_it_out_with_the_example_answers_200(
    browser: WebDriver, server: Server, name: str
) -> None:
    block = open_operation(browser, server, name)
    try_it_out(browser, block)
    textarea = block.find_element(By.CSS_SELECTOR, "textarea.body-param__text")
    body = json.loads(textarea.get_attribute("value") or "null")
    bundle = load_bundle(server.instance / "models" / name / DEMO_VERSION)
    # The pre-filled body is the example the OpenAPI document carries for this model.
    assert body == example_request(bundle)
    status, answer = execute(browser, block)
    assert status == "200", answer
    assert (answer["model_name"], answer["model_version"]) == (name, DEMO_VERSION)
    assert answer["predictions"] == expected_predictions(server, name, body)
    assert all(label in bundle.manifest.classes for label in answer["predictions"])
    # The request went from the page to this server's predict route.
    requests = browser.execute_script(
        "return performance.getEntriesByType('resource').map(entry => entry.name)"
    )
    assert f"{server.url}/v1/models/{name}:predict" in requests


def test_the_page_loads_nothing_from_elsewhere(browser: WebDriver, server: Server) -> None:
    open_operation(browser, server, "iris")
    origin = urlsplit(server.url).netloc
    loaded = browser.execute_script(
        "return performance.getEntriesByType('navigation')"
        ".concat(performance.getEntriesByType('resource')).map(entry => entry.name)"
    )
    referenced = browser.execute_script(
        "return Array.from(document.querySelectorAll('script[src], link[href], img[src]'))"
        ".map(element => element.src || element.href)"
    )
    paths = {urlsplit(url).path for url in loaded}
    assert {
        "/docs",
        "/docs/static/swagger-ui.css",
        "/docs/static/swagger-ui-bundle.js",
        "/docs/static/swagger-ui-standalone-preset.js",
        "/openapi.json",
    } <= paths, loaded
    for url in [*loaded, *referenced]:
        assert urlsplit(url).scheme in ("http", "data"), url
        if urlsplit(url).scheme == "http":
            assert urlsplit(url).netloc == origin, url
    # No script error and no Content-Security-Policy violation on the way; the only failed
    # load is the favicon the browser asks for by itself (the server has none).
    errors = [
        entry
        for entry in browser.get_log("browser")
        if entry["level"] == "SEVERE" and f"{server.url}/favicon.ico " not in entry["message"]
    ]
    assert errors == []
