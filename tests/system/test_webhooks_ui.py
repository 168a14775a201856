"""The dashboard's Webhooks page in headless Chromium against a real gunicorn: register an
endpoint (the secret shown once), see a job's event among its deliveries, delete it."""

from __future__ import annotations

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from tests.system.test_ui_browser import (  # noqa: F401 - fixtures, used by name
    browser,
    open_page,
    sqlite_only,
    ui,
    wait,
)

# A public address: registration only checks it (nothing runs a sender in this test).
ENDPOINT = "http://8.8.8.8/hooks/train"


@sqlite_only
def test_webhooks_page_registers_shows_deliveries_and_deletes(service, ui):  # noqa: F811
    open_page(ui, service, "/ui/webhooks")
    wait(ui, lambda d: "No webhooks." in d.find_element(By.ID, "webhooks-body").text,
         what="the empty table")
    ui.find_element(By.ID, "webhook-url").send_keys(ENDPOINT)
    events = Select(ui.find_element(By.ID, "webhook-events"))
    events.deselect_all()
    events.select_by_value("job.cancelled")
    ui.find_element(By.ID, "webhook-create").click()
    secret = wait(ui, lambda d: (p := d.find_element(By.ID, "webhook-secret")).is_displayed()
                  and p.text, what="the secret")
    assert "whsec_" in secret
    (hook,) = service.http.get(service.url + "/webhooks", timeout=10).json()
    assert hook["url"] == ENDPOINT and hook["events"] == ["job.cancelled"]
    row = wait(ui, lambda d: d.find_element(By.CSS_SELECTOR,
                                            f'#webhooks-body tr[data-id="{hook["id"]}"]'),
               what="the new row")
    assert ENDPOINT in row.text and "job.cancelled" in row.text

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
