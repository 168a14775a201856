"""Tokens/s of the built-in trainer vs nanoGPT's train.py on identical CPU configs.

    .venv/bin/python bench/trainer/run.py --nanogpt PATH/TO/nanoGPT [--pairs 5]

nanoGPT is never copied into this repository: pass a checkout of
https://github.com/karpathy/nanoGPT made outside it (or set ``NANOGPT_DIR``). The script
writes ``data/bench_bytes/{train,val}.bin`` (uint16 byte tokens of ``builtin:tinytext``) and
``meta.pkl`` (vocab_size 256) inside that checkout, because nanoGPT reads
``data/<dataset>/`` relative to its working directory.

Both trainers run as fresh subprocesses with the same Python, torch, thread count
(``OMP_NUM_THREADS`` and ``torch.set_num_threads``), model shape (bias on, dropout 0),
batch, block size, float32, no compile, grad clip 1.0 and weight decay 0.1. Runs are
interleaved (ours/nanoGPT, order alternating per pair) so load drift on a shared
machine hits both. Throughput = tokens per iteration / median wall time of one
steady-state iteration (the median shrugs off bursts of load from other processes),
skipping ``--warmup`` iterations and the last one (ours evaluates there). nanoGPT's
iteration time is its own printed ``time`` (t0..t1 around its whole loop body, batch
loading included); ours is the difference of consecutive ``elapsed_s`` values in the
per-step ``metrics`` events (the whole step, batch loading and logging included).
Reported: median of the per-pair ratios ours/nanoGPT.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from llm_train_api.training.catalog import get_model_spec  # noqa: E402
from llm_train_api.training.datasets import resolve_dataset  # noqa: E402
from llm_train_api.training.events import parse_line  # noqa: E402

DEFAULT_ITERS = {"gpt-nano": 60, "gpt-micro": 40, "gpt-mini": 30}
NANO_ITER_RE = re.compile(r"^iter (\d+): loss [-\d.naif]+, time ([\d.]+)ms")


def throughput(args: argparse.Namespace, iteration_seconds: list[float]) -> tuple[float, float]:
    """(tokens/s at the median iteration time, tokens/s at the 10th-percentile time)."""
    tokens = args.batch_size * args.block_size
    ordered = sorted(iteration_seconds)
    return tokens / statistics.median(ordered), tokens / ordered[len(ordered) // 10]


def prepare_nanogpt_data(nanogpt: Path) -> None:
    import numpy as np

    tokens = np.frombuffer(resolve_dataset("builtin:tinytext").read_bytes(), dtype=np.uint8)
    split = int(len(tokens) * 0.9)
    out = nanogpt / "data" / "bench_bytes"
    out.mkdir(parents=True, exist_ok=True)
    tokens[:split].astype(np.uint16).tofile(out / "train.bin")
    tokens[split:].astype(np.uint16).tofile(out / "val.bin")
    with open(out / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": 256}, f)


def env_for(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    env["MKL_NUM_THREADS"] = str(threads)
    env["PYTHONPATH"] = str(REPO)
    return env


def run_ours(
    model: str, args: argparse.Namespace, iters: int, workdir: Path
) -> tuple[float, float]:
    job = Path(tempfile.mkdtemp(dir=workdir))
    hp = {"batch_size": args.batch_size, "block_size": args.block_size, "max_steps": iters,
          "epochs": 10000, "log_interval": 1, "eval_interval": 0, "eval_steps": 1,
          "checkpoint_interval": 0, "num_threads": args.threads, "dropout": 0.0,
          "grad_clip": 1.0, "weight_decay": 0.1, "device": "cpu", "dtype": "float32",
          "warmup_steps": 10}
    cmd = [sys.executable, "-m", "llm_train_api.training", "run", "--job-dir", str(job),
           "--model", model, "--dataset", "builtin:tinytext", "--data-dir",
           str(workdir / "data"), "--hp", json.dumps(hp)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env_for(args.threads),
                          cwd=REPO, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"our trainer failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    elapsed = {e["step"]: e["elapsed_s"] for e in map(parse_line, proc.stdout.splitlines())
               if e and e["event"] == "metrics"}
    # Step s's wall time = elapsed at its log line minus elapsed at step s-1's log line.
    steady = [elapsed[s] - elapsed[s - 1] for s in range(args.warmup + 1, iters)]
    return throughput(args, steady)


def run_nanogpt(
    model: str, args: argparse.Namespace, iters: int, workdir: Path
) -> tuple[float, float]:
    spec = get_model_spec(model)
    cmd = [sys.executable, "train.py", "--dataset=bench_bytes", "--device=cpu",
           "--compile=False", "--dtype=float32", f"--n_layer={spec.n_layer}",
           f"--n_head={spec.n_head}", f"--n_embd={spec.n_embd}",
           f"--block_size={args.block_size}", f"--batch_size={args.batch_size}",
           "--gradient_accumulation_steps=1", f"--max_iters={iters - 1}",
           f"--lr_decay_iters={iters}", "--warmup_iters=10", "--eval_interval=1000000",
           "--eval_iters=1", "--log_interval=1", "--dropout=0.0", "--bias=True",
           "--always_save_checkpoint=False", f"--out_dir={workdir / 'nanogpt-out'}",
           "--wandb_log=False", "--grad_clip=1.0", "--weight_decay=0.1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env_for(args.threads),
                          cwd=args.nanogpt, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"nanoGPT failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    dts = {}
    for line in proc.stdout.splitlines():
        match = NANO_ITER_RE.match(line)
        if match:
            dts[int(match.group(1))] = float(match.group(2)) / 1000
    # nanoGPT's iteration i (0-based) corresponds to our step i+1.
    steady = [dts[i] for i in range(args.warmup, iters - 1)]
    return throughput(args, steady)


def machine_info() -> dict[str, str]:
    import torch

    model = platform.processor()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(ln.split(":", 1)[1].strip() for ln in out.splitlines()
                     if ln.startswith("Model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": model, "logical_cpus": str(os.cpu_count()), "torch": torch.__version__,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                       time.gmtime())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default = os.environ.get("NANOGPT_DIR")
    parser.add_argument("--nanogpt", type=Path, required=default is None,
                        default=Path(default) if default else None,
                        help="a nanoGPT checkout outside this repository (or NANOGPT_DIR)")
    parser.add_argument("--models", default="gpt-nano,gpt-micro,gpt-mini")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iters", type=int, help="iterations per run (default per model)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "trainer.json")
    args = parser.parse_args()
    if not (args.nanogpt / "train.py").is_file():
        parser.error(f"no nanoGPT checkout at {args.nanogpt} (see --help)")
    prepare_nanogpt_data(args.nanogpt)
    models = args.models.split(",")
    results: dict[str, dict[str, list[float]]] = {
        m: {"ours": [], "nanogpt": [], "ours_p10": [], "nanogpt_p10": []} for m in models}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for pair in range(args.pairs):
            for model in models:
                iters = args.iters or DEFAULT_ITERS.get(model, 30)
                order = ["ours", "nanogpt"] if pair % 2 == 0 else ["nanogpt", "ours"]
                for who in order:
                    runner = run_ours if who == "ours" else run_nanogpt
                    tps, best = runner(model, args, iters, workdir)
                    results[model][who].append(tps)
                    results[model][who + "_p10"].append(best)
                    print(f"pair {pair + 1}/{args.pairs} {model:10s} {who:8s} {tps:10,.0f} tok/s"
                          f" (p10 iteration: {best:,.0f} tok/s)", flush=True)
    rows = []
    for model in models:
        ours, nano = results[model]["ours"], results[model]["nanogpt"]
        ratios = [a / b for a, b in zip(ours, nano, strict=True)]
        ours_p10, nano_p10 = results[model]["ours_p10"], results[model]["nanogpt_p10"]
        ratios_p10 = [a / b for a, b in zip(ours_p10, nano_p10, strict=True)]
        rows.append({"model": model, "ours_tok_s": statistics.median(ours),
                     "nanogpt_tok_s": statistics.median(nano),
                     "ratio_median": statistics.median(ratios), "ratios": ratios,
                     "ratio_p10_median": statistics.median(ratios_p10),
                     "ratios_p10": ratios_p10, "ours": ours, "nanogpt": nano,
                     "ours_p10": ours_p10, "nanogpt_p10": nano_p10})
    info = machine_info()
    report = {"machine": info, "config": {"batch_size": args.batch_size,
                                          "block_size": args.block_size,
                                          "threads": args.threads, "dtype": "float32",
                                          "pairs": args.pairs, "warmup": args.warmup},
              "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\n{info['cpu']}, {info['logical_cpus']} CPUs, torch {info['torch']}, {info['date']}")
    print(f"batch {args.batch_size} x block {args.block_size}, float32, {args.threads} threads, "
          f"median of {args.pairs} interleaved pairs\n")
    print("| model | params | ours tok/s | nanoGPT tok/s | ratio (median of pairs) "
          "| per-pair ratios | ratio, p10 iterations |")
    print("|---|---:|---:|---:|---:|---|---:|")
    for row in rows:
        spread = ", ".join(f"{r:.2f}" for r in row["ratios"])
        print(f"| {row['model']} | {get_model_spec(row['model']).param_count:,} | "
              f"{row['ours_tok_s']:,.0f} | {row['nanogpt_tok_s']:,.0f} | "
              f"{row['ratio_median']:.2f}x | {spread} | {row['ratio_p10_median']:.2f}x |")
    print(f"\nraw results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
