"""Native job statuses in OpenAI's words.

A native `queued` job is OpenAI's `queued`: the files were checked when the job was
created (a bad file is a 400 then), so there is no separate `validating_files` phase to
report. A native `paused` job (`POST .../pause`, store.pausing) is OpenAI's `paused`; one
whose pause is still pending runs until its worker stops it, and reads `running`.
"""

from __future__ import annotations

from llm_train_api.domain import JobStatus

OPENAI_STATUSES = ("validating_files", "queued", "running", "paused", "succeeded", "failed",
                   "cancelled")

# Native status value -> OpenAI status.
STATUS_MAP: dict[str, str] = {
    "queued": "queued",
    "running": "running",
    "paused": "paused",
    "succeeded": "succeeded",
    "failed": "failed",
    "cancelled": "cancelled",
}


def openai_status(status: JobStatus | str) -> str:
    """OpenAI's status for a native one (an unknown newer status reads as `running`, the
    one that promises nothing about the result)."""
    value = status.value if isinstance(status, JobStatus) else status
    return STATUS_MAP.get(value, "running")
