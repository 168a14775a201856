"""Bare-Flask ceiling for the API benchmark.

Same routes as the real service, no database, no schemas: every handler returns
constant JSON through ``jsonify`` (POST/PATCH still parse the request body, as any
real handler must).  The list route returns 100 constant jobs plus a ``Link``
header so the response is about the size of a real first page.

Run it exactly like the real app:  gunicorn bench.api.bare_app:app
"""

from flask import Flask, jsonify, request

app = Flask(__name__)


def _job(i: int) -> dict:
    return {
        "id": f"bare-job-{i:06d}",
        "model_name": "gpt2",
        "dataset": "wikitext-2",
        "hyperparameters": {"learning_rate": 0.0003, "epochs": 3, "batch_size": 16},
        "status": "queued",
        "created_at": "2026-01-01T00:00:00.000000+00:00",
        "updated_at": "2026-01-01T00:00:00.000000+00:00",
        "started_at": None,
        "finished_at": None,
        "error_message": None,
        # The rest of the service's job representation, so both sides send the same bytes.
        "priority": 0,
        "attempts": 0,
        "max_attempts": 3,
        "max_runtime_seconds": None,
        "resources": None,
        "dataset_sha256": "4a74adf2bacd02693e8b3c8e820c13ebf3130e31c7e422f4dd4d805861b5fb87",
        "progress": None,
        "worker": None,
    }


JOB = _job(0)
RUNNING_JOB = dict(JOB, status="running")
PAGE = [_job(i) for i in range(100)]
NEXT_LINK = '</jobs?limit=100&cursor=YmFyZS1qb2ItMDAwMDk5>; rel="next"'


@app.post("/jobs")
def create_job():
    request.get_json()
    return jsonify(JOB), 201


@app.get("/jobs")
def list_jobs():
    resp = jsonify(PAGE)
    resp.headers["Link"] = NEXT_LINK
    return resp


@app.get("/jobs/<job_id>")
def get_job(job_id):
    return jsonify(JOB)


@app.patch("/jobs/<job_id>/status")
def patch_status(job_id):
    request.get_json()
    return jsonify(RUNNING_JOB)
