"""Built-in GPT trainer that the worker runs for each job.

Import rules (the API process must stay small):

* torch-free and numpy-free: :mod:`.catalog`, :mod:`.hyperparams`, :mod:`.datasets`,
  :mod:`.spec`, :mod:`.events`, :mod:`.formats` (dataset record kinds), :mod:`.storage`,
  :mod:`.tinytext`, :mod:`.launch` (the DDP launcher's supervisor), :mod:`.lease` (the
  lease watchdog a local worker arms), :mod:`.manifest` (the checkpoints a job keeps,
  with their sha256; the API lists and serves them), and the fine-tuning trainer's
  :mod:`.hf` package, :mod:`.hf.hyperparams` and :mod:`.hf.spec`. The API and the worker
  validate and launch jobs with these.
* need torch/numpy (the ``train`` extra): :mod:`.model`, :mod:`.data`, :mod:`.checkpoint`,
  :mod:`.distributed`, :mod:`.trainer` (with what it shares with the fine-tuning trainer,
  :mod:`.common_run`), :mod:`.sample`, and the CLI in :mod:`.__main__`.

This ``__init__`` therefore imports nothing heavy; it only re-exports the exit codes so a
worker can interpret the subprocess's return code without importing torch.

Run contract (details in :mod:`llm_train_api.training.__main__`)::

    python -m llm_train_api.training run --job-dir DIR [--spec spec.json]
    python -m llm_train_api.training sample --checkpoint DIR/ckpt_best.pt --prompt "..."
    python -m llm_train_api.training models

With ``processes > 1`` the worker runs ``run_command(job_dir, processes=N)`` instead: the
same ``run`` under torchrun, under :mod:`.launch`, with the same contract.
"""

from llm_train_api.training.events import (
    EVENT_PREFIX,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_PREEMPTED,
    EXIT_USAGE,
    parse_line,
)

__all__ = [
    "EVENT_PREFIX",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_PREEMPTED",
    "EXIT_USAGE",
    "parse_line",
]
