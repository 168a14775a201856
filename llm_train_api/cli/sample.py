"""`llm-train-api sample JOB_OR_MODEL`: text generated on this machine, from a job's
checkpoint, a fine-tuning job's model, a Hugging Face-format model, or a local model folder.

- A built-in GPT job: its checkpoint is downloaded through the artifacts endpoint and the
  trainer's own sampler (`python -m llm_train_api.training sample`) runs here.
- A fine-tuning job (its `fine_tuned_model`) or a model name (an import, a fine-tuned
  result, a MODEL_ROOTS folder): the model is downloaded through
  `GET /models/{name}/archive`, unpacked as it arrives, and
  `python -m llm_train_api.training.hf.generate` runs transformers' `generate` on it,
  offline and from safetensors only; `--chat` sends the prompt as a user message under
  the model's chat template.
- A local folder holding config.json: generated from it directly, nothing downloaded.

The service never spends its GPUs on it; this is the one client command that needs torch
(and transformers for Hugging Face-format models).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import click

from llm_train_api.cli.common import DownloadBar, client_command, fail
from llm_train_api.client import Client, Job, NotFound


@click.group()
def _holder() -> None:  # pragma: no cover - only a place to build the command in
    pass


@client_command(_holder, "sample")
@click.argument("target", metavar="JOB_OR_MODEL")
@click.option("--checkpoint", type=click.Choice(["best", "latest"]), default="best",
              show_default=True,
              help="Built-in GPT jobs: ckpt_best.pt (lowest validation loss) or "
              "ckpt_latest.pt; best falls back to latest when the job has none.")
@click.option("--prompt", default="\n", show_default="a newline", help="Text to continue.")
@click.option("--chat", is_flag=True, help="Hugging Face-format models: send the prompt as "
              "a user message under the model's chat template.")
@click.option("--max-new-tokens", type=click.IntRange(min=0), default=200, show_default=True)
@click.option("--temperature", type=float, default=1.0, show_default=True)
@click.option("--top-k", type=click.IntRange(min=1))
@click.option("--seed", type=int, help="For a reproducible sample.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1 ...")
@click.option("--keep", type=click.Path(),
              help="Also keep what was downloaded here: the checkpoint file, or the model "
              "folder (a new folder).")
def sample(api: Client, target: str, checkpoint: str, prompt: str, chat: bool,
           max_new_tokens: int, temperature: float, top_k: int | None, seed: int | None,
           device: str, keep: str | None, as_json: bool) -> None:
    """Generate text from a job or a model (runs here, needs torch)."""
    if importlib.util.find_spec("torch") is None:
        fail("sampling runs the model on this machine and needs torch: "
             "pip install 'llm-train-api[train]'")
    options = ["--max-new-tokens", str(max_new_tokens), "--temperature", str(temperature),
               "--device", device]
    if top_k is not None:
        options += ["--top-k", str(top_k)]
    if seed is not None:
        options += ["--seed", str(seed)]
    source: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="llm-train-api-sample-") as tmp:
        local = Path(target)
        job = None if (local / "config.json").is_file() else _job_or_none(api, target)
        if job is not None and job.model_kind != "hf":
            if chat:
                fail(f"--chat needs a Hugging Face-format model; job {target!r} trains a "
                     "built-in GPT, which has no chat template")
            path = Path(keep) if keep else Path(tmp) / "checkpoint.pt"
            source = {"job_id": job.id, "checkpoint": _checkpoint(api, job, checkpoint, path)}
            argv = [sys.executable, "-m", "llm_train_api.training", "sample", "--checkpoint",
                    str(path), "--prompt", prompt, *options]
        else:
            if importlib.util.find_spec("transformers") is None:
                fail("Hugging Face-format models need transformers here: "
                     "pip install 'llm-train-api[train,finetune]'")
            if (local / "config.json").is_file():
                folder, source = local, {"model_dir": str(local)}
            else:
                model = target if job is None else _model_of(job)
                folder = Path(keep) if keep else Path(tmp) / "model"
                try:
                    with DownloadBar(f"downloading {model}") as bar:
                        api.download_model(model, folder, extract=True, progress=bar)
                except NotFound:
                    fail(f"no job or model named {target!r}" if job is None else
                         f"job {target!r} made model {model!r}, which no longer exists")
                except OSError as exc:
                    fail(f"cannot write the download: {exc}")
                source = {"model": model, **({"job_id": job.id} if job else {})}
            argv = [sys.executable, "-m", "llm_train_api.training.hf.generate", "--model",
                    str(folder), "--prompt", prompt, *options, *(["--chat"] if chat else [])]
        proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        fail(f"the sampler exited with {proc.returncode}: {last}", proc.returncode)
    text = proc.stdout[:-1] if proc.stdout.endswith("\n") else proc.stdout
    if as_json:
        click.echo(json.dumps({**source, "prompt": prompt, "chat": chat, "text": text},
                              ensure_ascii=False))
    elif chat or prompt == "\n":
        click.echo(text)
    else:
        click.echo(prompt + text)


def _job_or_none(api: Client, name: str) -> Job | None:
    try:
        return api.get_job(name)
    except NotFound:
        return None  # then it names a model


def _model_of(job: Job) -> str:
    """The model a fine-tuning job produced, or why there is none to sample."""
    if job.fine_tuned_model:
        return job.fine_tuned_model
    if job.status == "succeeded":
        fail(f"job {job.id!r} saved an adapter only (no merged model): download it with "
             f"`llm-train-api jobs download-adapter {job.id} --extract` and load it with "
             "peft on its base model")
    fail(f"job {job.id!r} is {job.status}: it has no model until it succeeds")


def _checkpoint(api: Client, job: Job, which: str, path: Path) -> str:
    """Download the job's checkpoint to `path`; the artifact's name."""
    names = [f"ckpt_{which}.pt"] + (["ckpt_latest.pt"] if which == "best" else [])
    for name in names:
        try:
            api.download_artifact(job.id, name, path)
            return name
        except NotFound:
            continue
    fail(f"job {job.id!r} has no checkpoint yet ({' or '.join(names)})")
