"""The dashboard in a real browser: headless Chromium driven by Selenium (Debian's chromium
and chromedriver), against a real gunicorn and a real worker that trains tiny models.

Run with LLM_TRAIN_API_SCREENSHOTS=1 to (re)write docs/screenshots/*.png.
"""

from __future__ import annotations

import hashlib
import os
import re
import tarfile

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from llm_train_api.ui import CONTENT_SECURITY_POLICY
from tests.helpers.clients import admin_client
from tests.helpers.finetune import import_model, upload_jsonl
from tests.helpers.servers import REPO_ROOT, TINY
from tests.helpers.tiny_hf import chat_records, preference_records

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
    must hold no error (a 401, or a status in `expect_status`, counts only where a test
    expects one)."""
    # An earlier test's page could still be polling its own server, stopped by now: leave
    # it first, then forget what it logged.
    browser.get("about:blank")
    browser.get_log("browser")
    browser.base = service.url
    browser.expect_401 = False
    browser.expect_status = ()
    yield browser
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    browser.get("about:blank")  # stop this page's polling before its server stops
    if browser.expect_401 or service.token is not None:
        # Pages load before the token is entered: their first calls are refused.
        errors = [e for e in errors if "401" not in e["message"]]
    errors = [e for e in errors if not any(f"status of {code}" in e["message"]
                                           for code in browser.expect_status)]
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


def vertices(driver, series: str, chart: str = "loss-chart") -> int:
    found = driver.find_elements(By.CSS_SELECTOR, f"#{chart} g.{series} polyline")
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

    # The trainer's protocol lines are hidden until asked for.
    log = ui.find_element(By.ID, "log")
    assert "step 120/" in log.text and "@@llm_train_api" not in log.text
    assert "protocol lines hidden" in ui.find_element(By.ID, "log-hidden").text
    ui.find_element(By.ID, "log-protocol").click()
    wait(ui, lambda d: '@@llm_train_api {"event"' in log.text, what="the protocol lines")
    assert "step 120/" in log.text and not ui.find_element(By.ID, "log-hidden").text
    ui.find_element(By.ID, "log-protocol").click()
    wait(ui, lambda d: "@@llm_train_api" not in log.text, what="the protocol lines to hide")

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
def test_pause_and_resume_from_the_job_page(service, ui):
    service.start_worker()
    submit(service, "ui-pause", max_steps=100_000, checkpoint_interval=100_000)
    open_page(ui, service, "/ui/jobs/ui-pause")

    def badge(d):
        return d.find_element(By.CSS_SELECTOR, "#job-status .badge").text

    wait(ui, lambda d: badge(d) == "running" and d.find_element(
        By.ID, "pause-button").is_displayed(), what="the job to run, with a Pause button")
    assert not ui.find_element(By.ID, "resume-button").is_displayed()
    wait(ui, lambda d: vertices(d, "series-train") >= 3, what="the first points")
    ui.find_element(By.ID, "pause-button").click()
    wait(ui, lambda d: badge(d) == "paused", timeout=30, what="the page to show paused")
    job = service.http.get(f"{service.url}/jobs/ui-pause", timeout=10).json()
    assert job["status"] == "paused" and job["attempts"] == 0
    wait(ui, lambda d: d.find_element(By.ID, "resume-button").is_displayed()
         and not d.find_element(By.ID, "pause-button").is_displayed(),
         what="Resume in place of Pause")
    assert ui.find_element(By.ID, "cancel-button").is_displayed()  # still cancellable
    wait(ui, lambda d: "paused" in [li.get_attribute("data-kind") for li in d.find_elements(
        By.CSS_SELECTOR, "#events li")], what="the paused event")
    paused_at = job["progress"]["step"]

    ui.find_element(By.ID, "resume-button").click()
    wait(ui, lambda d: badge(d) == "running", timeout=30, what="the job to run again")
    wait(ui, lambda d: (service.http.get(f"{service.url}/jobs/ui-pause", timeout=10).json()
                        ["progress"] or {}).get("step", 0) > paused_at + 2,
         what="the resumed run to go on")
    starts = [e for e in service.http.get(f"{service.url}/jobs/ui-pause/events",
                                          timeout=10).json() if e["kind"] == "claimed"]
    assert [e["attempt"] for e in starts] == [1, 1]  # the pause spent no attempt
    assert service.http.post(f"{service.url}/jobs/ui-pause/cancel", timeout=10).status_code \
        == 200


def plan_figure(driver, key: str) -> int:
    text = driver.find_element(By.CSS_SELECTOR, f'#nj-plan-body tr[data-key="{key}"] td').text
    return int(text.replace(",", ""))


def field_errors(driver, field: str) -> str:
    found = driver.find_elements(By.CSS_SELECTOR, f'.field[data-field="{field}"] .field-error')
    return found[0].text if found else ""


def fill(driver, element_id: str, value: str) -> None:
    box = driver.find_element(By.ID, element_id)
    box.clear()
    box.send_keys(value)


@sqlite_only
def test_new_job_form_previews_a_fine_tuning_run_then_creates_it(service, ui, tiny_hf_model):
    import_model(service, tiny_hf_model)
    for name, records in (("chat", chat_records(32)), ("chat-val", chat_records(8))):
        upload_jsonl(service, name, records)
    ui.expect_status = (422,)  # the refused dry run below
    open_page(ui, service, "/ui")
    ui.find_element(By.ID, "new-job-link").click()
    wait(ui, lambda d: d.find_elements(By.CSS_SELECTOR, '#nj-model option[value="tiny"]'),
         what="the model picker")
    assert ui.title.startswith("New job")
    model = Select(ui.find_element(By.ID, "nj-model"))
    assert "builtin" in model.first_selected_option.text  # the built-in GPTs come first
    assert "(hf: LlamaForCausalLM" in ui.find_element(
        By.CSS_SELECTOR, '#nj-model option[value="tiny"]').text
    assert "(chat, jsonl)" in ui.find_element(
        By.CSS_SELECTOR, '#nj-dataset option[value="chat"]').text
    assert "(text, " in ui.find_element(
        By.CSS_SELECTOR, '#nj-dataset option[value="builtin:tinytext"]').text
    # A built-in GPT's fields come from its schema.
    block = wait(ui, lambda d: d.find_element(By.ID, "hp-block_size"), what="the schema")
    assert block.get_attribute("placeholder") == "default: 256"
    assert not ui.find_element(By.ID, "nj-output-model").is_displayed()

    model.select_by_value("tiny")
    wait(ui, lambda d: d.find_element(By.ID, "hp-lora-r").is_displayed(),
         what="the fine-tuning fields")
    assert not ui.find_elements(By.ID, "hp-block_size")
    # ... and a fine-tuning model's from the trainer's schema, nested LoRA keys included.
    assert ui.find_element(By.ID, "hp-lora-dropout").get_attribute("placeholder") == \
        "default: 0.05"
    assert ui.find_element(By.ID, "hp-lora-target_modules").get_attribute("type") == "text"
    assert ui.find_element(By.ID, "hp-packing").tag_name == "select"
    # The dpo object's fields show for method dpo only; LoRA's hide for full.
    method = Select(ui.find_element(By.ID, "hp-method"))
    assert not ui.find_element(By.ID, "hp-dpo-beta").is_displayed()
    method.select_by_value("dpo")
    assert ui.find_element(By.ID, "hp-dpo-beta").is_displayed()
    assert ui.find_element(By.ID, "hp-lora-r").is_displayed()
    method.select_by_value("full")
    assert not ui.find_element(By.ID, "hp-lora-r").is_displayed()
    assert not ui.find_element(By.ID, "hp-dpo-beta").is_displayed()
    method.select_by_value("")  # back to the default (lora)
    assert "context 256 tokens, with chat template" in ui.find_element(
        By.ID, "nj-model-info").text
    Select(ui.find_element(By.ID, "nj-dataset")).select_by_value("chat")
    Select(ui.find_element(By.ID, "nj-validation")).select_by_value("chat-val")
    fill(ui, "nj-job-id", "ui-ft")
    fill(ui, "nj-output-model", "tiny-ui")
    fill(ui, "nj-priority", "5")
    for element_id, value in (("hp-max_steps", "12"), ("hp-batch_size", "4"),
                              ("hp-lora-r", "8"), ("hp-learning_rate", "0.01"),
                              ("hp-max_seq_length", "4096")):
        fill(ui, element_id, value)
    fill(ui, "nj-extra", '{"warmup_steps": 2, "lora": {"dropout": 0.0}}')

    # A refusal: the message is shown under the field it is about; nothing to create.
    ui.find_element(By.ID, "nj-preview").click()
    wait(ui, lambda d: "context" in field_errors(d, "hyperparameters.max_seq_length"),
         what="the field's error")
    assert "hyperparameters.max_seq_length" in ui.find_element(By.ID, "nj-errors").text
    assert ui.find_element(By.ID, "nj-submit").get_attribute("disabled")
    assert not ui.find_element(By.ID, "nj-plan").is_displayed()

    ui.find_element(By.ID, "hp-max_seq_length").clear()
    ui.find_element(By.ID, "nj-preview").click()
    wait(ui, lambda d: d.find_element(By.ID, "nj-plan").is_displayed(), timeout=180,
         what="the dry run's plan")
    assert not ui.find_element(By.ID, "nj-errors").is_displayed()
    assert not field_errors(ui, "hyperparameters.max_seq_length")
    # 32 training conversations, and the 8 of the validation dataset (no held-out share).
    assert plan_figure(ui, "train_sequences") == 32 and plan_figure(ui, "val_sequences") == 8
    assert plan_figure(ui, "records") == plan_figure(ui, "examples") == 40
    assert plan_figure(ui, "tokens") > 0 and plan_figure(ui, "truncated") == 0
    assert plan_figure(ui, "total_steps") == 12
    assert ui.find_element(By.CSS_SELECTOR, '#nj-plan-body tr[data-key="method"] td'
                           ).text == "lora"
    assert re.fullmatch(r"[\d.]+ (B|KiB|MiB|GiB)", ui.find_element(
        By.CSS_SELECTOR, '#nj-plan-body tr[data-key="estimated_memory_bytes"] td').text)
    assert "activations" in ui.find_element(
        By.CSS_SELECTOR, '#nj-plan-body tr[data-key="memory"] td').text
    assert service.http.get(f"{service.url}/jobs/ui-ft", timeout=10).status_code == 404
    screenshot(ui, "new-job.png")

    # A change makes the preview stale; the previewed form again is ready to go.
    submit_button = ui.find_element(By.ID, "nj-submit")
    assert submit_button.is_enabled()
    fill(ui, "nj-priority", "6")
    assert not submit_button.is_enabled() and "preview it again" in ui.find_element(
        By.ID, "nj-state").text
    fill(ui, "nj-priority", "5")
    assert submit_button.is_enabled()
    submit_button.click()

    wait(ui, lambda d: d.current_url.endswith("/ui/jobs/ui-ft"), what="the job page")
    wait(ui, lambda d: d.find_element(By.CSS_SELECTOR, "#job-status .badge").text == "queued",
         what="the job")
    job = service.http.get(f"{service.url}/jobs/ui-ft", timeout=10).json()
    assert (job["model_name"], job["dataset"], job["validation_dataset"], job["output_model"],
            job["priority"], job["model_kind"]) == ("tiny", "chat", "chat-val", "tiny-ui", 5,
                                                    "hf")
    hp = job["hyperparameters"]
    assert (hp["max_steps"], hp["batch_size"], hp["learning_rate"], hp["warmup_steps"],
            hp["lora"], hp["method"]) == (12, 4, 0.01, 2, {"r": 8, "dropout": 0.0}, "lora")
    facts = {name: ui.find_element(By.ID, f"job-{name}").text
             for name in ("kind", "method", "dataset", "validation", "output-model")}
    assert facts == {"kind": "fine-tuning a Hugging Face-format model", "method": "lora",
                     "dataset": "chat", "validation": "chat-val",
                     "output-model": "tiny-ui (once it succeeds)"}
    model_link = ui.find_element(By.CSS_SELECTOR, "#job-model a")
    assert model_link.text == "tiny" and model_link.get_attribute("href").endswith(
        "/ui/models#model-tiny")
    model_link.click()
    wait(ui, lambda d: "target" in d.find_element(By.ID, "model-tiny").get_attribute("class"),
         what="the model's row")


@sqlite_only
def test_a_fine_tuned_model_links_to_its_job_and_back(service, ui, tiny_hf_model):
    import_model(service, tiny_hf_model)
    upload_jsonl(service, "chat", chat_records(16))
    service.start_worker()
    body = {"job_id": "ui-tuned", "model_name": "tiny", "dataset": "chat",
            "output_model": "tiny-tuned", "hyperparameters": {
                "max_steps": 2, "batch_size": 4, "log_interval": 1, "eval_interval": 0,
                "checkpoint_interval": 0, "lora": {"r": 4}}}
    assert service.http.post(f"{service.url}/jobs", json=body, timeout=30).status_code == 201
    open_page(ui, service, "/ui/jobs/ui-tuned")
    wait(ui, lambda d: d.find_element(By.CSS_SELECTOR, "#job-status .badge").text
         in ("succeeded", "failed"), timeout=180, what="the fine-tuning job to end")
    assert service.http.get(f"{service.url}/jobs/ui-tuned", timeout=10).json()[
        "status"] == "succeeded"
    # Once the job succeeded its output model exists: a link to it.
    wait(ui, lambda d: d.find_elements(By.CSS_SELECTOR, "#job-output-model a"),
         what="the output model's link")[0].click()
    row = wait(ui, lambda d: d.find_element(By.ID, "model-tiny-tuned"), what="the models page")
    assert "target" in row.get_attribute("class")
    assert "fine-tuned" in row.text and "from tiny (lora) by job ui-tuned" in row.text
    # Its files download as the tar GET /models/{name}/archive serves (with the token).
    row.find_element(By.CSS_SELECTOR, "button.download").click()
    saved = ui.downloads / "tiny-tuned.tar"
    served = service.http.get(f"{service.url}/models/tiny-tuned/archive", timeout=30).content
    wait(ui, lambda d: saved.exists() and saved.read_bytes() == served,
         what="the model download")
    with tarfile.open(saved) as tar:
        assert "config.json" in tar.getnames()
    row.find_element(By.LINK_TEXT, "ui-tuned").click()
    wait(ui, lambda d: d.current_url.endswith("/ui/jobs/ui-tuned"), what="the job page")


@sqlite_only
def test_a_dpo_job_page_charts_the_rewards(service, ui, tiny_hf_model):
    import_model(service, tiny_hf_model)
    upload_jsonl(service, "prefs", preference_records(16))
    service.start_worker()
    body = {"job_id": "ui-dpo", "model_name": "tiny", "dataset": "prefs",
            "hyperparameters": {
                "method": "dpo", "max_steps": 4, "batch_size": 4, "learning_rate": 0.01,
                "log_interval": 1, "eval_interval": 2, "checkpoint_interval": 0,
                "merge_adapter": False, "lora": {"r": 4, "dropout": 0.0}}}
    assert service.http.post(f"{service.url}/jobs", json=body, timeout=30).status_code == 201
    open_page(ui, service, "/ui/jobs/ui-dpo")
    wait(ui, lambda d: d.find_element(By.CSS_SELECTOR, "#job-status .badge").text
         in ("succeeded", "failed"), timeout=180, what="the DPO job to end")
    assert service.http.get(f"{service.url}/jobs/ui-dpo", timeout=10).json()[
        "status"] == "succeeded"
    panel = wait(ui, lambda d: d.find_element(By.ID, "rewards-panel").is_displayed()
                 and d.find_element(By.ID, "rewards-panel"), what="the rewards chart")
    assert [e.text for e in panel.find_elements(By.CSS_SELECTOR, ".legend text")] == [
        "margin", "validation margin", "chosen", "rejected"]
    wait(ui, lambda d: all(vertices(d, cls, "rewards-chart") == n for cls, n in (
        ("series-train", 4), ("series-val", 2), ("series-chosen", 4), ("series-rejected", 4))),
        what="every step of the rewards drawn")
    latest = ui.find_element(By.ID, "rewards-latest").text
    assert re.search(r"step 4 · margin -?[\d.]+ · reward accuracy [\d.]+ · validation "
                     r"accuracy [\d.]+, margin -?[\d.]+ \(step 4\)", latest), latest
    screenshot(ui, "job-dpo.png")


# Draws into a fresh container with the page's LossChart and reads both axes back.
DRAW_CHART = """
const div = document.createElement("div");
document.body.append(div);
LossChart(div).draw(arguments[0]);
const ticks = (axis, attr) => [...div.querySelectorAll("text.tick-" + axis)].map((t) => ({
  value: Number(t.getAttribute("data-value")), text: t.textContent,
  pos: Number(t.getAttribute(attr))}));
const [yAxis, xAxis] = div.querySelectorAll("line.axis");
const points = [...div.querySelectorAll("polyline")].flatMap(
  (p) => p.getAttribute("points").split(" ").map((xy) => xy.split(",").map(Number)));
const out = {x: ticks("x", "x"), y: ticks("y", "y"), points,
  left: Number(xAxis.getAttribute("x1")), right: Number(xAxis.getAttribute("x2")),
  top: Number(yAxis.getAttribute("y1")), bottom: Number(yAxis.getAttribute("y2"))};
div.remove();
return out;
"""


@sqlite_only
def test_the_loss_chart_labels_both_axes_from_min_to_max(service, ui):
    submit(service, "ui-axes")  # no worker: it stays queued, its page has no points
    open_page(ui, service, "/ui/jobs/ui-axes")
    wait(ui, lambda d: d.find_element(By.CSS_SELECTOR, "#job-status .badge").text == "queued",
         what="the job page")
    falling = [{"step": s, "train_loss": 2.41 + 3.09 * (120 - s) ** 2 / 119 ** 2}
               for s in range(1, 121)]
    falling += [{"step": s, "val_loss": 2.6 + (120 - s) / 50} for s in range(20, 121, 20)]
    cases = {
        "a falling curve": falling,
        "a single point": [{"step": 7, "train_loss": 3.3}],
        "a flat curve": [{"step": s, "train_loss": 2.0} for s in range(0, 51, 10)],
        "a flat curve at zero": [{"step": s, "train_loss": 0.0} for s in range(3)],
        "a tiny range": [{"step": s, "train_loss": 2.0 + s * 1e-5} for s in range(1, 5)],
        "validation only": [{"step": 100, "val_loss": 1.5}, {"step": 200, "val_loss": 1.2}],
        "a long run": [{"step": s, "train_loss": 9.0 - s / 50_000}
                       for s in range(1000, 250_001, 1000)],
    }
    for name, points in cases.items():
        drawn = ui.execute_script(DRAW_CHART, points)
        xs = [p["step"] for p in points]
        ys = [v for p in points for v in (p.get("train_loss"), p.get("val_loss"))
              if v is not None]
        for axis, values, lo_pos, hi_pos in (("x", xs, drawn["left"], drawn["right"]),
                                             ("y", ys, drawn["bottom"], drawn["top"])):
            ticks = drawn[axis]
            labels = [t["value"] for t in ticks]
            assert 2 <= len(ticks) <= 12, (name, axis, ticks)
            assert labels == sorted(labels), (name, axis, labels)
            # The first and last labels are at the axis's ends, and enclose every value.
            assert labels[0] <= min(values) and labels[-1] >= max(values), (name, axis, labels)
            assert ticks[0]["pos"] == pytest.approx(lo_pos, abs=0.1), (name, axis, ticks)
            assert ticks[-1]["pos"] == pytest.approx(hi_pos, abs=0.1), (name, axis, ticks)
            texts = [t["text"] for t in ticks]
            assert len(set(texts)) == len(texts), (name, axis, texts)  # neighbours differ
            assert all(float(t["text"]) == pytest.approx(t["value"], rel=1e-9, abs=1e-12)
                       for t in ticks), (name, axis, texts)
            if axis == "x":
                assert all(v == int(v) for v in labels), (name, labels)  # whole steps
            if min(values) >= 0:
                assert labels[0] >= 0, (name, axis, labels)
        for x, y in drawn["points"]:  # every vertex inside the frame
            assert drawn["left"] - 0.1 <= x <= drawn["right"] + 0.1, (name, x)
            assert drawn["top"] - 0.1 <= y <= drawn["bottom"] + 0.1, (name, y)


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
    for path in ("/ui", "/ui/", "/ui/datasets", "/ui/models", "/ui/new-job",
                 "/ui/jobs/anything", "/ui/webhooks"):
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
    for name in ("common.js", "jobs.js", "job.js", "chart.js", "datasets.js", "models.js",
                 "newjob.js", "webhooks.js", "ui.css"):
        assert anonymous.get(f"/ui/static/{name}").status_code == 200, name
        code = (REPO_ROOT / "llm_train_api/ui/static" / name).read_text()
        assert not re.search(r"\.(inner|outer)HTML\s*=|insertAdjacentHTML|document\.write",
                             code), name
    assert anonymous.get("/ui/static/../__init__.py").status_code == 404
    # The data itself stays behind the token.
    assert anonymous.get("/jobs").status_code == 401
    assert client.get("/jobs").status_code == 200


# A public address: registration only checks it (nothing runs a sender in this test).
WEBHOOK_ENDPOINT = "http://8.8.8.8/hooks/train"


@sqlite_only
def test_webhooks_page_registers_shows_deliveries_and_deletes(service, ui):
    open_page(ui, service, "/ui/webhooks")
    wait(ui, lambda d: "No webhooks." in d.find_element(By.ID, "webhooks-body").text,
         what="the empty table")
    ui.find_element(By.ID, "webhook-url").send_keys(WEBHOOK_ENDPOINT)
    events = Select(ui.find_element(By.ID, "webhook-events"))
    events.deselect_all()
    events.select_by_value("job.cancelled")
    ui.find_element(By.ID, "webhook-create").click()
    secret = wait(ui, lambda d: (p := d.find_element(By.ID, "webhook-secret")).is_displayed()
                  and p.text, what="the secret")
    assert "whsec_" in secret
    (hook,) = service.http.get(service.url + "/webhooks", timeout=10).json()
    assert hook["url"] == WEBHOOK_ENDPOINT and hook["events"] == ["job.cancelled"]
    row = wait(ui, lambda d: d.find_element(By.CSS_SELECTOR,
                                            f'#webhooks-body tr[data-id="{hook["id"]}"]'),
               what="the new row")
    assert WEBHOOK_ENDPOINT in row.text and "job.cancelled" in row.text

    body = {"job_id": "hooked", "model_name": "gpt-nano", "dataset": "builtin:tinytext",
            "hyperparameters": {"max_steps": 1}}
    assert service.http.post(service.url + "/jobs", json=body, timeout=10).status_code == 201
    service.http.post(service.url + "/jobs/hooked/cancel", timeout=10)
    row.find_element(By.CSS_SELECTOR, "button.show-deliveries").click()
    delivery = wait(ui, lambda d: d.find_element(By.CSS_SELECTOR,
                                                 '#deliveries-body tr[data-state="pending"]'),
                    what="the delivery")
    assert "job.cancelled" in delivery.text and "hooked" in delivery.text

    delete = row.find_element(By.CSS_SELECTOR, "button.delete")
    delete.click()
    delete.click()
    wait(ui, lambda d: not d.find_elements(By.CSS_SELECTOR,
                                           f'#webhooks-body tr[data-id="{hook["id"]}"]'),
         what="the row to go")
    assert service.http.get(service.url + "/webhooks", timeout=10).json() == []


@sqlite_only
def test_the_checkpoint_table_downloads_and_compare_runs_overlays_two_jobs(service, ui):
    service.start_worker()
    for job_id, lr in (("cmp-a", 0.003), ("cmp-b", 0.0005)):
        submit(service, job_id, max_steps=30, eval_interval=10, checkpoint_interval=10,
               learning_rate=lr)
    open_page(ui, service, "/ui/jobs/cmp-a")  # the table fills in as checkpoints land
    for job_id in ("cmp-a", "cmp-b"):
        job = wait(ui, lambda d, j=job_id: (got := service.http.get(
            f"{service.url}/jobs/{j}", timeout=10).json())["status"] in (
            "succeeded", "failed") and got, timeout=180, what=f"{job_id} to end")
        assert job["status"] == "succeeded", job["error_message"]

    wait(ui, lambda d: [tr.get_attribute("data-step") for tr in d.find_elements(
        By.CSS_SELECTOR, "#checkpoints-body tr")] == ["10", "20", "30"],
        what="the checkpoint table")
    listed = service.http.get(f"{service.url}/jobs/cmp-a/checkpoints", timeout=10).json()
    best = next(c["step"] for c in listed if c["is_best"])
    row = ui.find_element(By.CSS_SELECTOR, f'#checkpoints-body tr[data-step="{best}"]')
    assert "★" in row.text
    assert f"step {best}" in ui.find_element(By.ID, "job-best").text
    row.find_element(By.CSS_SELECTOR, "button.download").click()
    saved = ui.downloads / f"cmp-a-step-{best}.tar"
    wait(ui, lambda d: saved.is_file() and saved.stat().st_size > 0,
         what="the checkpoint download")
    with tarfile.open(saved) as tar:
        data = tar.extractfile(f"step-{best:08d}.pt").read()
    assert hashlib.sha256(data).hexdigest() == next(
        c["sha256"] for c in listed if c["step"] == best)

    ui.find_element(By.ID, "compare-link").click()
    wait(ui, lambda d: "/ui/compare" in d.current_url, what="the compare page")
    wait(ui, lambda d: d.find_element(
        By.CSS_SELECTOR, '#compare-picker label[data-job-id="cmp-b"] input'),
        what="the job picker").click()
    wait(ui, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#compare-chart g.series polyline"))
         == 2, what="two curves")
    assert [e.text for e in ui.find_elements(By.CSS_SELECTOR, "#compare-chart .legend text")
            ] == ["cmp-a", "cmp-b"]
    assert ui.current_url.endswith("/ui/compare?jobs=cmp-a,cmp-b")
    lr_row = ui.find_element(By.CSS_SELECTOR, '#compare-body tr[data-row="learning_rate"]')
    assert lr_row.text.split() == ["learning_rate", "0.003", "0.0005"]
    assert not ui.find_elements(By.CSS_SELECTOR, '#compare-body tr[data-row="max_steps"]')
    screenshot(ui, "compare.png")
