"""`llm-train-api sample JOB_ID`: text from a job's checkpoint, generated on this machine.

The checkpoint is downloaded through the artifacts endpoint and the trainer's own sampler
(`python -m llm_train_api.training sample`) runs locally, so the service never spends its
GPUs on it; this is the one client command that needs torch.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import click

from llm_train_api.cli.common import client_command, fail
from llm_train_api.client import Client, NotFound


@click.group()
def _holder() -> None:  # pragma: no cover - only a place to build the command in
    pass


@client_command(_holder, "sample")
@click.argument("job_id")
@click.option("--checkpoint", type=click.Choice(["best", "latest"]), default="best",
              show_default=True,
              help="ckpt_best.pt (lowest validation loss) or ckpt_latest.pt; best falls "
              "back to latest when the job has none.")
@click.option("--prompt", default="\n", show_default="a newline", help="Text to continue.")
@click.option("--max-new-tokens", type=click.IntRange(min=0), default=200, show_default=True)
@click.option("--temperature", type=float, default=1.0, show_default=True)
@click.option("--top-k", type=click.IntRange(min=1))
@click.option("--seed", type=int, help="For a reproducible sample.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1 ...")
@click.option("--keep", type=click.Path(dir_okay=False),
              help="Also save the downloaded checkpoint to this file.")
def sample(api: Client, job_id: str, checkpoint: str, prompt: str, max_new_tokens: int,
           temperature: float, top_k: int | None, seed: int | None, device: str,
           keep: str | None, as_json: bool) -> None:
    """Generate text from a job's checkpoint (runs here, needs torch)."""
    if importlib.util.find_spec("torch") is None:
        fail("sampling runs the model on this machine and needs torch: "
             "pip install 'llm-train-api[train]'")
    with tempfile.TemporaryDirectory(prefix="llm-train-api-sample-") as tmp:
        path = Path(keep) if keep else Path(tmp) / "checkpoint.pt"
        names = [f"ckpt_{checkpoint}.pt"] + (["ckpt_latest.pt"] if checkpoint == "best" else [])
        for name in names:
            try:
                api.download_artifact(job_id, name, path)
                break
            except NotFound:
                if name == names[-1]:
                    api.get_job(job_id)  # a missing job is its own 404, and clearer
                    fail(f"job {job_id!r} has no checkpoint yet ({' or '.join(names)})")
        argv = [sys.executable, "-m", "llm_train_api.training", "sample", "--checkpoint",
                str(path), "--prompt", prompt, "--max-new-tokens", str(max_new_tokens),
                "--temperature", str(temperature), "--device", device]
        if top_k is not None:
            argv += ["--top-k", str(top_k)]
        if seed is not None:
            argv += ["--seed", str(seed)]
        proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        fail(f"the sampler exited with {proc.returncode}: {last}", proc.returncode)
    text = proc.stdout[:-1] if proc.stdout.endswith("\n") else proc.stdout
    if as_json:
        click.echo(json.dumps({"job_id": job_id, "checkpoint": name, "prompt": prompt,
                               "text": text}, ensure_ascii=False))
    else:
        click.echo(prompt + text if prompt != "\n" else text)
