"""The web dashboard at `/ui`: jobs, a New job form with a dry-run preview, a job's loss
curve, events, log and checkpoints, compare runs, datasets, models and webhooks.

Server-rendered HTML shells and small vanilla JavaScript files, all shipped in the package:
no CDN, so it works on a machine without internet access. The shells carry no data and
are public; every figure is fetched by the browser from the JSON API with the user's
bearer token (kept in sessionStorage), so the dashboard can never show more than the
token may read. Responses carry a strict Content-Security-Policy: scripts and styles only
from this origin, no inline script, no framing.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Flask, Response, render_template, send_from_directory

from llm_train_api.api.auth import UI_CSP, public

STATIC_DIR = Path(__file__).resolve().parent / "static"

bp = Blueprint("ui", __name__, url_prefix="/ui", template_folder="templates")

# The dashboard's policy, defined with the API's others in api.auth.
CONTENT_SECURITY_POLICY = UI_CSP
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
STATUSES = ("queued", "running", "paused", "succeeded", "failed", "cancelled")


def init_app(app: Flask) -> None:
    """Register the dashboard. One call from create_app()."""
    app.register_blueprint(bp)


@bp.after_request
def _security_headers(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


@bp.get("/", strict_slashes=False)
@public
def jobs_page():
    """The jobs table; the browser fills it from GET /jobs."""
    return render_template("ui_jobs.html", page="jobs", statuses=STATUSES)


@bp.get("/new-job")
@public
def new_job_page():
    """The New job form: pickers and hyperparameters from the API, a dry-run preview, then
    the job. (Not under /ui/jobs/, where it would hide a job named "new".)"""
    return render_template("ui_new_job.html", page="new-job")


@bp.get("/jobs/<job_id>")
@public
def job_page(job_id: str):
    """One job: the id is only echoed (escaped) into the shell; the data comes from the API."""
    return render_template("ui_job.html", page="job", job_id=job_id)


@bp.get("/compare")
@public
def compare_page():
    """Compare runs: the jobs named in `?jobs=a,b` (or picked on the page), their loss
    curves on one chart and their hyperparameter differences in a table."""
    return render_template("ui_compare.html", page="compare")


@bp.get("/datasets")
@public
def datasets_page():
    """Upload, list and delete datasets."""
    return render_template("ui_datasets.html", page="datasets")


@bp.get("/models")
@public
def models_page():
    """List, import and delete models."""
    return render_template("ui_models.html", page="models")


@bp.get("/webhooks")
@public
def webhooks_page():
    """Register, list and delete webhook endpoints, and see their recent deliveries."""
    return render_template("ui_webhooks.html", page="webhooks")


@bp.get("/static/<path:filename>")
@public
def static(filename: str):
    """The dashboard's scripts, styles and icon (Flask's blueprint static view cannot carry
    the `public` mark, so it is this explicit one)."""
    return send_from_directory(STATIC_DIR, filename, max_age=300)
