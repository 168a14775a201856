"""`llm-train-api worker`: a process that claims queued jobs and runs them.

A server-side command: it opens the service's database with the same LLM_TRAIN_API_*
settings as the API. Loaded lazily by `llm_train_api.cli.main`, so client commands never
import the worker, the store or torch.
"""

from __future__ import annotations

import logging
import signal

import click

from llm_train_api.config import ConfigError


@click.command()
@click.option("--concurrency", type=click.IntRange(1, 256), default=1, show_default=True,
              help="jobs this worker runs at once (with --executor ray: jobs it keeps on the "
                   "cluster at once)")
@click.option("--executor", type=click.Choice(["local", "ray"]), default=None,
              help="local: run trainers here. ray: dispatch each job to a Ray cluster "
                   "(default: LLM_TRAIN_API_WORKER_EXECUTOR or local)")
@click.option("--ray-address", default=None, metavar="URL",
              help="Ray dashboard / Job Submission address, e.g. http://ray-head:8265 "
                   "(default: LLM_TRAIN_API_RAY_ADDRESS)")
def worker(concurrency: int, executor: str | None, ray_address: str | None) -> None:
    """Claim queued jobs and run the trainer for each, until SIGTERM or Ctrl-C.

    Local executor: the first signal checkpoints the running jobs and hands them back to
    the queue without spending an attempt; a second one kills them at once. Ray executor:
    a signal leaves the Ray jobs running and hands them to the next dispatcher.
    """
    from llm_train_api import create_app
    from llm_train_api.worker.executors import Executor, LocalExecutor
    from llm_train_api.worker.service import Worker, WorkerConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    app = create_app({"BOOTSTRAP_TOKEN": False})  # a worker needs no API token
    cfg = app.config
    if cfg["EXECUTOR"] == "none":
        raise click.UsageError("LLM_TRAIN_API_EXECUTOR=none: jobs are driven externally, "
                               "there is nothing for a worker to run.")
    kind = executor or cfg["WORKER_EXECUTOR"]
    gpus = _worker_gpus(app.extensions["llm_train_api.runtime"].settings.worker_gpus()) \
        if kind == "local" else []
    config = WorkerConfig.from_app_config(cfg, concurrency=concurrency, gpus=gpus)
    runner: Executor
    if kind == "ray":
        from llm_train_api.worker.ray_executor import RayExecutor

        try:
            runner = RayExecutor(ray_address or cfg["RAY_ADDRESS"], data_dir=cfg["DATA_DIR"],
                                 python=cfg["RAY_PYTHON"], threads=cfg["TRAINER_THREADS"],
                                 shared=cfg["RAY_DATA_DIR_SHARED"])
            runner.check()
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
    else:
        runner = LocalExecutor(gpus=gpus, threads=cfg["TRAINER_THREADS"])
    service = Worker(app.extensions["llm_train_api.store"], config, executor=runner)

    def on_signal(signum: int, _frame: object) -> None:
        if service.stopping.is_set():
            service.hard_stop.set()
        service.stopping.set()
        service.wake.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    service.run()


def _worker_gpus(configured: list[int] | None) -> list[int]:
    """The GPUs LLM_TRAIN_API_WORKER_GPUS names; for "auto", every GPU torch can see."""
    if configured is not None:
        return configured
    try:
        import torch
    except ImportError:
        return []
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
