"""The dashboard in a real browser: headless Chromium driven by Selenium (Debian's chromium
and chromedriver), against a real gunicorn and a real worker that trains tiny models.

Run with LLM_TRAIN_API_SCREENSHOTS=1 to (re)write docs/screenshots/*.png.
"""

from __future__ import annotations

import hashlib
import os
import re

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from llm_train_api.ui import CONTENT_SECURITY_POLICY
from tests.helpers.clients import admin_client
from tests.helpers.servers import REPO_ROOT, TINY

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOTS = REPO_ROOT / "docs" / "screenshots"
TAKE_SCREENSHOTS = os.environ.get("LLM_TRAIN_API_SCREENSHOTS") == "1"

# The dashboard is the same on either database: the API suites cover PostgreSQL.
sqlite_only = pytest.mark.parametrize("service", ["sqlite"], indirect=True)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            pytest.fail(f"{path} is missing: the dashboard tests need Debian's chromium and "
                        "chromium-driver (`make browser` installs them).", pytrace=False)
    profile = tmp_path_factory.mktemp("chromium-profile")
    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", "--disable-sync",
                "--disable-quic", f"--user-data-dir={profile}", "--window-size=1280,1100"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    options.add_experimental_option("prefs", {
        "download.default_directory": str(downloads), "download.prompt_for_download": False})
    driver = webdriver.Chrome(
        service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                           {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    yield driver
    driver.quit()


@pytest.fixture
def ui(browser, service):
    """The browser, with the server's URL at hand; after the test, the browser's console
    must hold no error (a 401 counts only where a test expects one)."""
    browser.get_log("browser")  # forget what earlier tests left behind
    browser.base = service.url
    browser.expect_401 = False
    yield browser
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    if browser.expect_401 or service.token is not None:
        # Pages load before the token is entered: their first calls are refused.
        errors = [e for e in errors if "401" not in e["message"]]
    assert not errors, errors


def open_page(driver, service, path: str) -> None:
    """Load a dashboard page and, when the server wants one, enter the token in its box."""
    driver.get(service.url + path)
    if service.token is not None and not driver.execute_script(
            "return sessionStorage.getItem('llm_train_api.token')"):
        enter_token(driver, service.token)


def enter_token(driver, token: str) -> None:
    if not driver.find_element(By.ID, "token-panel").is_displayed():
        driver.find_element(By.ID, "token-button").click()
    box = driver.find_element(By.ID, "token-input")
    box.clear()
    box.send_keys(token)
    driver.find_element(By.ID, "token-save").click()


def wait(driver, predicate, timeout: float = 60, what: str = "the page"):
    def check(d):
        try:
            return predicate(d)
        except (StaleElementReferenceException, WebDriverException):
            return False  # the table was re-rendered under us: look again
    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(
        check, message=f"timed out waiting for {what}")


def row_status(driver, job_id: str) -> str | None:
    rows = driver.find_elements(By.CSS_SELECTOR, f'#jobs-body tr[data-job-id="{job_id}"]')
    return rows[0].get_attribute("data-status") if rows else None


def vertices(driver, series: str) -> int:
    found = driver.find_elements(By.CSS_SELECTOR, f"#loss-chart g.{series} polyline")
    return len(found[0].get_attribute("points").split()) if found else 0


def submit(service, job_id: str, **hp) -> None:
    body = {"job_id": job_id, "model_name": "gpt-nano", "dataset": "builtin:tinytext",
            "hyperparameters": {**TINY, **hp}}
    resp = service.http.post(service.url + "/jobs", json=body, timeout=10)
    assert resp.status_code == 201, resp.text


def screenshot(driver, name: str) -> None:
    if TAKE_SCREENSHOTS:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(SCREENSHOTS / name))


@sqlite_only
def test_a_job_appears_succeeds_and_its_page_shows_curve_events_log_and_checkpoints(
        service, ui):
    service.start_worker()
    open_page(ui, service, "/ui")
    assert ui.title.startswith("Jobs")
    wait(ui, lambda d: d.find_element(By.ID, "last-updated").text, what="the first poll")
    # Submitted after the page loaded: the table must pick it up by itself.
    submit(service, "ui-ok", max_steps=120, eval_interval=20, checkpoint_interval=40,
           log_interval=1)
    wait(ui, lambda d: row_status(d, "ui-ok"), what="the job to appear")
    wait(ui, lambda d: row_status(d, "ui-ok") == "succeeded", timeout=180,
         what="the job to succeed in the table")
    row = ui.find_element(By.CSS_SELECTOR, '#jobs-body tr[data-job-id="ui-ok"]')
    assert "gpt-nano" in row.text and "builtin:tinytext" in row.text
    assert row.find_element(By.TAG_NAME, "progress").get_attribute("value") == "1"
    # One job running behind it and one waiting (the worker runs one at a time).
    submit(service, "ui-next", max_steps=100_000)
    submit(service, "ui-waiting", max_steps=100_000)
    wait(ui, lambda d: row_status(d, "ui-next") == "running" and re.search(
        r"\b\d+ / 100000", d.find_element(By.CSS_SELECTOR,
                                         '#jobs-body tr[data-job-id="ui-next"]').text),
         what="the running job's progress")
    assert row_status(ui, "ui-waiting") == "queued"
    assert ui.execute_script("return [...document.querySelectorAll('#jobs-body tr')]"
                             ".map(tr => tr.dataset.jobId)") == [
        "ui-waiting", "ui-next", "ui-ok"]  # newest first
    screenshot(ui, "jobs.png")
    for job_id in ("ui-waiting", "ui-next"):  # free the CPU for the rest
        assert service.http.post(f"{service.url}/jobs/{job_id}/cancel",
                                 timeout=10).status_code == 200

    row.find_element(By.LINK_TEXT, "ui-ok").click()
    wait(ui, lambda d: d.find_element(By.CSS_SELECTOR, "#job-status .badge").text
         == "succeeded", what="the job page")
    wait(ui, lambda d: vertices(d, "series-train") >= 120, what="the training curve")
    assert vertices(ui, "series-val") >= 5  # every 20 steps and at the end
    assert len(ui.find_elements(By.CSS_SELECTOR, "#loss-chart .axes text.tick")) >= 6
    assert [e.text for e in ui.find_elements(By.CSS_SELECTOR, "#loss-chart .legend text")] == [
        "train loss", "validation loss"]
    wait(ui, lambda d: d.execute_script(
        "return [...document.querySelectorAll('#events li')].map(li => li.dataset.kind)")
        == ["created", "claimed", "status"], what="the events timeline")
    wait(ui, lambda d: d.find_element(By.ID, "log").text.strip(), what="the log tail")
    assert not ui.find_element(By.ID, "cancel-button").is_displayed()
    screenshot(ui, "job.png")

    # A checkpoint download carries the token (fetch, then save the blob).
    listed = {a["name"]: a for a in service.http.get(
        f"{service.url}/jobs/ui-ok/artifacts", timeout=10).json()}
    wait(ui, lambda d: d.find_element(
        By.CSS_SELECTOR, '#artifacts-body tr[data-name="ckpt_best.pt"] button.download'),
        what="the checkpoints list").click()
    saved = ui.downloads / "ckpt_best.pt"
    wait(ui, lambda d: saved.is_file() and saved.stat().st_size
         == listed["ckpt_best.pt"]["size_bytes"], what="the checkpoint download")
    original = service.http.get(f"{service.url}/jobs/ui-ok/artifacts/ckpt_best.pt", timeout=30)
    assert hashlib.sha256(saved.read_bytes()).digest() == hashlib.sha256(
        original.content).digest()


@sqlite_only
def test_cancel_from_the_job_page_while_the_curve_grows(service, ui):
    service.start_worker()
    submit(service, "ui-long", max_steps=100_000)
    open_page(ui, service, "/ui/jobs/ui-long")
    wait(ui, lambda d: d.find_element(By.CSS_SELECTOR, "#job-status .badge").text == "running",
         what="the job to run")
    wait(ui, lambda d: vertices(d, "series-train") >= 3, what="the first points")
    first = vertices(ui, "series-train")
    wait(ui, lambda d: vertices(d, "series-train") > first, what="the curve to grow live")

    ui.find_element(By.ID, "cancel-button").click()
    ui.find_element(By.ID, "cancel-yes").click()
    wait(ui, lambda d: d.find_element(By.CSS_SELECTOR, "#job-status .badge").text
         == "cancelled", timeout=20, what="the page to show cancelled")
    assert service.http.get(f"{service.url}/jobs/ui-long", timeout=10).json()[
        "status"] == "cancelled"
    wait(ui, lambda d: [li.get_attribute("data-kind") for li in d.find_elements(
        By.CSS_SELECTOR, "#events li")][-1:] == ["status"], what="the cancel event")
    assert not ui.find_element(By.ID, "cancel-button").is_displayed()

    # The table agrees, and its status filter keeps it to the status asked for.
    ui.find_element(By.LINK_TEXT, "Jobs").click()
    wait(ui, lambda d: row_status(d, "ui-long") == "cancelled", what="the table")
    Select(ui.find_element(By.ID, "status-filter")).select_by_value("running")
    wait(ui, lambda d: row_status(d, "ui-long") is None and "No running jobs" in d.find_element(
        By.ID, "jobs-body").text, what="the filter to hide it")
    assert ui.current_url.endswith("/ui/?status=running")  # a reload keeps the filter
    Select(ui.find_element(By.ID, "status-filter")).select_by_value("cancelled")
    wait(ui, lambda d: row_status(d, "ui-long") == "cancelled", what="the cancelled filter")


@sqlite_only
def test_datasets_page_uploads_lists_and_deletes(service, ui, tmp_path):
    text = "".join(f"line {i}: the quick brown fox <b>jumps</b>\n" for i in range(300))
    source = tmp_path / "fables.txt"
    source.write_text(text)
    open_page(ui, service, "/ui/datasets")
    wait(ui, lambda d: d.find_elements(By.CSS_SELECTOR,
                                       '#datasets-body tr[data-name="builtin:tinytext"]'),
         what="the built-in dataset")
    ui.find_element(By.ID, "dataset-file").send_keys(str(source))
    assert ui.find_element(By.ID, "dataset-name").get_attribute("value") == "fables"
    ui.find_element(By.ID, "upload-button").click()
    wait(ui, lambda d: "Uploaded fables" in d.find_element(By.ID, "upload-result").text,
         what="the upload")
    row = wait(ui, lambda d: d.find_element(By.CSS_SELECTOR,
                                            '#datasets-body tr[data-name="fables"]'),
               what="the new row")
    screenshot(ui, "datasets.png")
    stored = service.http.get(service.url + "/datasets/fables", timeout=10).json()
    assert stored["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert stored["lines"] == 300 and "300" in row.text
    # The admin's upload is published for everyone, and the row says so.
    assert stored["owner"] is None and "published" in row.text

    delete = row.find_element(By.CSS_SELECTOR, "button.delete")
    delete.click()
    assert delete.text == "Confirm delete"  # the first click only arms it
    assert service.http.get(service.url + "/datasets/fables", timeout=10).status_code == 200
    delete.click()
    wait(ui, lambda d: not d.find_elements(By.CSS_SELECTOR,
                                           '#datasets-body tr[data-name="fables"]'),
         what="the row to go")
    assert service.http.get(service.url + "/datasets/fables", timeout=10).status_code == 404


@sqlite_only
def test_a_refused_token_is_asked_for_again_and_logout_forgets_it(service, ui):
    assert service.token, "the service runs with authentication, as by default"
    ui.expect_401 = True
    ui.get(service.url + "/ui")
    banner = ui.find_element(By.ID, "banner")
    wait(ui, lambda d: banner.is_displayed() and "401" in banner.text, what="the 401 banner")
    assert ui.find_element(By.ID, "token-panel").is_displayed()
    enter_token(ui, "not-a-valid-token")
    wait(ui, lambda d: "refused your token" in banner.text, what="the refusal")
    assert ui.find_element(By.ID, "token-panel").is_displayed()
    assert ui.execute_script("return sessionStorage.getItem('llm_train_api.token')") is None

    enter_token(ui, service.token)
    wait(ui, lambda d: d.find_element(By.ID, "last-updated").text, what="the table")
    assert not banner.is_displayed()
    assert ui.find_element(By.ID, "auth-state").text == "Token set"
    ui.find_element(By.ID, "logout-button").click()
    assert ui.execute_script("return sessionStorage.getItem('llm_train_api.token')") is None
    wait(ui, lambda d: "401" in banner.text, what="the next poll to be refused")


def test_html_pages_are_public_shells_with_strict_security_headers(app):
    client = admin_client(app)
    anonymous = app.test_client()
    for path in ("/ui", "/ui/", "/ui/datasets", "/ui/jobs/anything"):
        resp = anonymous.get(path)
        assert resp.status_code == 200 and resp.mimetype == "text/html", path
        assert resp.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["Referrer-Policy"] == "no-referrer"
        assert resp.headers["X-Frame-Options"] == "DENY"
        html = resp.get_data(as_text=True)
        # Every script is a file from this origin: no inline code, nothing external.
        scripts = re.findall(r"<script[^>]*>[^<]*</script>", html)
        assert scripts and len(scripts) == html.count("<script")
        assert all(re.fullmatch(r'<script src="/ui/static/\w+\.js" defer></script>', tag)
                   for tag in scripts), scripts
        assert "http://" not in html and "https://" not in html
    assert "default-src 'self'" in CONTENT_SECURITY_POLICY
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY
    # The job id in the URL is echoed escaped, never as markup.
    html = anonymous.get("/ui/jobs/%3Cimg%20src%3Dx%3E").get_data(as_text=True)
    assert "<img" not in html and "&lt;img src=x&gt;" in html
    for name in ("common.js", "jobs.js", "job.js", "chart.js", "datasets.js", "ui.css"):
        assert anonymous.get(f"/ui/static/{name}").status_code == 200, name
        code = (REPO_ROOT / "llm_train_api/ui/static" / name).read_text()
        assert not re.search(r"\.(inner|outer)HTML\s*=|insertAdjacentHTML|document\.write",
                             code), name
    assert anonymous.get("/ui/static/../__init__.py").status_code == 404
    # The data itself stays behind the token.
    assert anonymous.get("/jobs").status_code == 401
    assert client.get("/jobs").status_code == 200

