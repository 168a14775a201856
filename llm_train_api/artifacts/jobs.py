"""Where a job's files live in the artifact store (a folder, LLM_TRAIN_API_DATA_DIR).

    DATA_DIR/datasets/<name>[.txt|.jsonl]     uploaded datasets (see training.datasets)
    DATA_DIR/jobs/<job id>-<created_us hex>/  one folder per job incarnation:
        spec.json, metrics.jsonl, ckpt_latest.pt, ckpt_best.pt   (written by the trainer)
        train.log                                                 (the trainer's stdout+stderr)

The creation time is in the folder name because an id can be reused after a DELETE: a new
job must never resume from its deleted namesake's checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from llm_train_api.domain import Job

LOG_NAME = "train.log"
JOBS_FOLDER = "jobs"


def job_dir(data_dir: str | Path, job: Job) -> Path:
    return Path(data_dir) / JOBS_FOLDER / f"{job.id}-{job.revision.created_us:x}"


def log_path(data_dir: str | Path, job: Job) -> Path:
    return job_dir(data_dir, job) / LOG_NAME
