"""Where the trainer's CPU time goes, piece by piece, vs nanoGPT's equivalents.

    .venv/bin/python bench/trainer/components.py [--model gpt-nano] [--threads 1]

Times, in one process and interleaved (so load drift hits both sides), the per-step
pieces that differ from nanoGPT's train.py: batch loading (our vectorised gather from a
persistent memmap vs. re-opening ``np.memmap`` and stacking rows in a Python loop, as
nanoGPT's ``get_batch`` does; re-implemented here, not copied), and the AdamW step
(fused vs. the default foreach implementation nanoGPT uses on CPU). It also counts the
minor page faults of a full training step before and after the glibc allocator tuning.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from llm_train_api.training.catalog import get_model_spec  # noqa: E402
from llm_train_api.training.data import BatchSampler  # noqa: E402
from llm_train_api.training.datasets import resolve_dataset  # noqa: E402
from llm_train_api.training.model import GPT, GPTConfig  # noqa: E402
from llm_train_api.training.trainer import tune_host_allocator  # noqa: E402


def timed(fn, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="gpt-nano")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    b, t = args.batch_size, args.block_size
    raw = np.frombuffer(resolve_dataset("builtin:tinytext").read_bytes(), dtype=np.uint8)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.bin"
        raw.astype(np.uint16).tofile(path)

        def loop_batch() -> None:  # the per-row pattern of nanoGPT's get_batch
            data = np.memmap(path, dtype=np.uint16, mode="r")
            ix = torch.randint(len(data) - t, (b,))
            x = torch.stack([torch.from_numpy(data[i:i + t].astype(np.int64)) for i in ix])
            y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + t].astype(np.int64))
                             for i in ix])
            del x, y

        sampler = BatchSampler(raw.copy(), t, b, seed=0, val_fraction=0.1)
        step = iter(range(10**9))
        ours, theirs = [], []
        for _ in range(5):
            ours.append(timed(lambda: sampler.train_batch(next(step)), 200))
            theirs.append(timed(loop_batch, 200))
        print(f"batch loading    ours {statistics.median(ours):.3f} ms   "
              f"per-row loop {statistics.median(theirs):.3f} ms")

    model = GPT(GPTConfig.from_spec(get_model_spec(args.model)))
    x = torch.randint(0, 256, (b, t))
    groups = model.optimizer_groups(0.1)
    fused = torch.optim.AdamW(groups, lr=1e-4, fused=True)
    foreach = torch.optim.AdamW(model.optimizer_groups(0.1), lr=1e-4, foreach=True)
    _, loss = model(x, x)
    loss.backward()  # gradients stay in place; only the optimizer steps are timed
    f_ms, e_ms = [], []
    for _ in range(5):
        f_ms.append(timed(fused.step, 50))
        e_ms.append(timed(foreach.step, 50))
    print(f"AdamW step       fused {statistics.median(f_ms):.3f} ms   "
          f"foreach {statistics.median(e_ms):.3f} ms")

    def train_step() -> None:
        model.zero_grad(set_to_none=True)
        _, loss = model(x, x)
        loss.backward()
        fused.step()

    def faults_per_step(n: int = 10) -> float:
        for _ in range(3):
            train_step()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(n):
            train_step()
        return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / n

    default_faults = faults_per_step()
    step_default = timed(train_step, 20)
    tuned = tune_host_allocator()
    tuned_faults = faults_per_step()
    step_tuned = timed(train_step, 20)
    print(f"page faults/step default {default_faults:.0f} ({step_default:.2f} ms/step)   "
          f"tuned={tuned} {tuned_faults:.0f} ({step_tuned:.2f} ms/step)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
