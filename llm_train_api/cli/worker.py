"""`llm-train-api worker`: claim queued jobs and run them, until SIGTERM or Ctrl-C.

A server-side command: it opens the service's database through a Runtime built from the
same LLM_TRAIN_API_* settings as the service, without building the Flask app.
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
    from llm_train_api.config import Settings
    from llm_train_api.runtime import Runtime
    from llm_train_api.worker.executors import Executor, LocalExecutor
    from llm_train_api.worker.service import Worker, WorkerConfig, resolve_gpus

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = Settings.load()
    logging.getLogger("llm_train_api").setLevel(settings.LOG_LEVEL.upper())
    if settings.EXECUTOR == "none":
        raise click.UsageError("LLM_TRAIN_API_EXECUTOR=none: jobs are driven externally, "
                               "there is nothing for a worker to run.")
    kind = executor or settings.WORKER_EXECUTOR
    if ray_address and kind != "ray":
        raise click.UsageError("--ray-address is for the Ray executor: add --executor ray "
                               "(or set LLM_TRAIN_API_WORKER_EXECUTOR=ray).")
    runtime = Runtime.build(settings)
    gpus = resolve_gpus(settings) if kind == "local" else []
    config = WorkerConfig.from_settings(settings, data_dir=runtime.data_dir,
                                        concurrency=concurrency, gpus=gpus)
    runner: Executor
    if kind == "ray":
        from llm_train_api.worker.ray_executor import RayExecutor

        try:
            runner = RayExecutor(ray_address or settings.RAY_ADDRESS,
                                 data_dir=str(runtime.data_dir), python=settings.RAY_PYTHON,
                                 threads=settings.TRAINER_THREADS,
                                 shared=settings.RAY_DATA_DIR_SHARED,
                                 token=settings.RAY_TOKEN)
            runner.check()
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
    else:
        runner = LocalExecutor(gpus=gpus, threads=settings.TRAINER_THREADS,
                               lease_s=settings.LEASE_S)
    sender = None
    if settings.WEBHOOK_SENDER:
        from llm_train_api.services.webhooks.sender import SenderConfig, WebhookSender

        sender = WebhookSender(runtime.webhooks, SenderConfig.from_settings(settings))
    service = Worker(runtime.queue, config, executor=runner, webhook_sender=sender)

    def on_signal(signum: int, _frame: object) -> None:
        if service.stopping.is_set():
            service.hard_stop.set()
        service.stopping.set()
        service.wake.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        service.run()
    finally:
        runtime.close()
