"""Which trainer runs a job, and with what: the built-in trainer's RunSpec for a built-in
GPT, the fine-tuning trainer's FineTuneSpec for a Hugging Face-format model. Executors
write the spec into the job folder and run the command for it; everything else (events,
exit codes, resume from the folder's checkpoint) is the same contract for both.
"""

from __future__ import annotations

import os
from pathlib import Path

from llm_train_api.training.hf.spec import FineTuneSpec
from llm_train_api.training.hf.spec import run_command as finetune_command
from llm_train_api.training.spec import RunSpec, run_command, write_spec

TrainerSpec = RunSpec | FineTuneSpec


def command(spec: TrainerSpec, job_dir: str | os.PathLike[str], *, python: str,
            processes: int) -> list[str]:
    """argv of the trainer for `spec` (ValueError: `processes` out of range)."""
    if isinstance(spec, FineTuneSpec):
        return finetune_command(job_dir, python=python, processes=processes)
    return run_command(job_dir, python=python, processes=processes)


def write(job_dir: str | os.PathLike[str], spec: TrainerSpec) -> Path:
    """`JOB_DIR/spec.json`, written atomically, which the bare run command reads."""
    return write_spec(job_dir, spec)
