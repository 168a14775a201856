"""Model FLOPs utilisation of the real trainer loop on one GPU (prepared, needs CUDA).

    .venv/bin/python bench/trainer/gpu_mfu.py [--model gpt2] [--batch-size 16]
        [--block-size 1024] [--steps 60] [--peak-tflops 989]

Runs :func:`llm_train_api.training.trainer.execute` in-process on ``builtin:tinytext``
(batches are sampled with replacement, so the small corpus does not matter for speed)
with bfloat16 autocast, ``torch.compile`` and fused AdamW, and reads ``tokens_per_s``
from the ``metrics`` events after the warm-up (compilation happens in the first steps).

FLOPs per token (PaLM appendix B; same as nanoGPT's estimate_mfu):
``6 * N + 12 * n_layer * n_embd * block_size`` where N is the parameter count without
the position embedding (the tied token embedding is counted: it is the output matmul).
MFU = FLOPs/token * tokens/s / peak; the default peak is the H100 SXM dense bf16
figure, 989 TFLOP/s (use ~756 for H100 PCIe).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from llm_train_api.training.catalog import flops_per_token, get_model_spec  # noqa: E402
from llm_train_api.training.events import EventWriter  # noqa: E402
from llm_train_api.training.trainer import execute  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="gpt2")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--block-size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=20, help="steps excluded (compile)")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("CUDA is not available: this benchmark needs a GPU.", file=sys.stderr)
        return 2

    metrics: list[dict] = []

    def listen(event: dict) -> None:
        if event["event"] == "metrics":
            metrics.append(event)

    hp = {"batch_size": args.batch_size, "block_size": args.block_size,
          "max_steps": args.steps, "epochs": 10000, "log_interval": 5, "eval_interval": 0,
          "eval_steps": 1, "checkpoint_interval": 0, "device": "cuda", "dtype": args.dtype,
          "compile": not args.no_compile, "warmup_steps": 10}
    with tempfile.TemporaryDirectory() as tmp:
        spec = {"model_name": args.model, "dataset": "builtin:tinytext",
                "hyperparameters": hp, "data_dir": str(Path(tmp) / "data")}
        code = execute(spec, Path(tmp) / "job", EventWriter(listener=listen))
    if code != 0:
        return code
    steady = [m["tokens_per_s"] for m in metrics
              if m["step"] > args.warmup and m["step"] < args.steps]
    tokens_per_s = statistics.median(steady)
    fpt = flops_per_token(args.model, args.block_size)
    mfu = fpt * tokens_per_s / (args.peak_tflops * 1e12)
    result = {
        "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
        "model": args.model, "params": get_model_spec(args.model).param_count,
        "batch_size": args.batch_size, "block_size": args.block_size, "dtype": args.dtype,
        "compile": not args.no_compile, "tokens_per_s": round(tokens_per_s),
        "flops_per_token": fpt, "achieved_tflops": round(fpt * tokens_per_s / 1e12, 1),
        "peak_tflops": args.peak_tflops, "mfu": round(mfu, 4),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
