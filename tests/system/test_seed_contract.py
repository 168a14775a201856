"""A client written for the seed keeps working: its curl examples, exactly as written and in
order, against a real gunicorn server with no executor: with auth disabled, and with auth on
and the token given to curl by its config file (the commands themselves unchanged).
"""

from __future__ import annotations

import json
import os
import re
import subprocess

# Verbatim from the seed README (only the host:port is substituted at run time).
SEED_CURLS = [
    '''curl -X POST "http://127.0.0.1:8000/jobs" \\
    -H "Content-Type: application/json" \\
    -d '{
          "job_id": "job-001",
          "model_name": "gpt-mini",
          "dataset": "dataset-v1",
          "hyperparameters": {"learning_rate": 0.001, "epochs": 5}
        }\'''',
    'curl "http://127.0.0.1:8000/jobs"',
    'curl "http://127.0.0.1:8000/jobs/job-001"',
    '''curl -X PATCH "http://127.0.0.1:8000/jobs/job-001/status" \\
    -H "Content-Type: application/json" \\
    -d '{"status": "running"}\'''',
    'curl -X DELETE "http://127.0.0.1:8000/jobs/job-001"',
]
SEED_FIELDS = ["id", "model_name", "dataset", "hyperparameters", "status", "created_at",
               "updated_at", "error_message"]
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$")


def run_seed_curl(command: str, base_url: str, curl_home: str | None = None) -> tuple[int, str]:
    # Through a real shell, so the backslash continuations and quoting are the seed's own.
    script = command.replace("http://127.0.0.1:8000", base_url) + " -s -w '\n%{http_code}'"
    env = {**os.environ, "CURL_HOME": curl_home or "/nonexistent"}
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30,
                         check=True, env=env).stdout
    body, _, code = out.rpartition("\n")
    return int(code), body


def test_seed_curl_examples_work_as_written(gunicorn_factory):
    server = gunicorn_factory(
        workers=2, env={"LLM_TRAIN_API_AUTH": "disabled", "LLM_TRAIN_API_EXECUTOR": "none"}
    )
    check_seed_flow(server.url, None)


def test_seed_curl_examples_work_with_auth_when_curl_sends_the_token(gunicorn_factory,
                                                                   tmp_path):
    server = gunicorn_factory(workers=2, env={"LLM_TRAIN_API_EXECUTOR": "none"})
    assert server.token
    code, body = run_seed_curl(SEED_CURLS[1], server.url)
    assert code == 401 and json.loads(body)["code"] == 401
    (tmp_path / ".curlrc").write_text(f'header = "Authorization: Bearer {server.token}"\n')
    check_seed_flow(server.url, str(tmp_path))


def check_seed_flow(url: str, curl_home: str | None) -> None:
    create, list_all, get_one, patch, delete = SEED_CURLS

    def run_curl(command: str, base_url: str) -> tuple[int, str]:
        return run_seed_curl(command, base_url, curl_home)

    code, body = run_curl(create, url)
    assert code == 201
    job = json.loads(body)
    assert list(job)[: len(SEED_FIELDS)] == SEED_FIELDS
    assert job["id"] == "job-001" and job["model_name"] == "gpt-mini"
    assert job["dataset"] == "dataset-v1" and job["status"] == "queued"
    assert job["hyperparameters"] == {"learning_rate": 0.001, "epochs": 5}
    assert job["error_message"] is None
    assert TS.match(job["created_at"]) and TS.match(job["updated_at"])

    code, body = run_curl(list_all, url)
    assert code == 200 and json.loads(body) == [job]

    code, body = run_curl(get_one, url)
    assert code == 200 and json.loads(body) == job

    code, body = run_curl(patch, url)
    assert code == 200
    running = json.loads(body)
    assert running["status"] == "running" and running["created_at"] == job["created_at"]
    assert running["updated_at"] >= job["updated_at"]

    code, body = run_curl(delete, url)
    assert code == 204 and body == ""
    code, _ = run_curl(get_one, url)
    assert code == 404
