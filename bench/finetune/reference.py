"""The reference: a plain transformers + peft fine-tuning loop, as one would write it by hand.

    python bench/finetune/reference.py --model-path DIR --batches FILE --method lora|full
        [--device cpu|cuda] [--dtype float32|bfloat16] [--threads N]

It imports nothing from llm_train_api. ``--batches`` is a JSON file written by
``bench/finetune/run.py``: ``{"pad_id": P, "steps": [[{"input_ids": [...], "mask":
[...]}, ...], ...]}``, the exact global batches the service's trainer draws at each step
(so both sides train on the same tokens). Per step: right-pad and collate,
``model(input_ids, attention_mask, labels).loss`` (transformers' own shifted, mean cross
entropy), ``backward``, ``clip_grad_norm_(1.0)``, ``AdamW.step``, a cosine schedule,
``zero_grad``, and ``loss.item()`` for the log line. Weights as the service loads them:
LoRA freezes the base in the compute dtype (peft keeps the adapters in float32); full
fine-tuning keeps float32 weights; bfloat16 runs under ``torch.autocast``.

Prints one JSON line per step on stdout: ``{"step", "t", "dt", "tokens", "loss"}``: ``t``
is ``perf_counter()`` when the step ended (after ``loss.item()``), ``dt`` the wall time of
the step (collate included), ``tokens`` the non-pad tokens. The harness times a step as
the difference of consecutive ``t`` (so the log line is inside it, as it is for the
service's trainer, whose step time is the difference of consecutive ``elapsed_s``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

for _name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_name] = "1"

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, get_cosine_schedule_with_warmup  # noqa: E402

IGNORE = -100


def collate(batch: list[dict], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    width = max(len(e["input_ids"]) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    for row, example in enumerate(batch):
        n = len(example["input_ids"])
        ids[row, :n] = torch.tensor(example["input_ids"])
        attention[row, :n] = 1
        mask = torch.tensor(example["mask"], dtype=torch.bool)
        labels[row, :n] = torch.where(mask, ids[row, :n], IGNORE)
    return {"input_ids": ids.to(device), "attention_mask": attention.to(device),
            "labels": labels.to(device)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-path", required=True)
    p.add_argument("--batches", required=True)
    p.add_argument("--method", choices=("lora", "full"), required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    with open(args.batches) as f:
        data = json.load(f)
    steps, pad_id = data["steps"], data["pad_id"]

    torch.manual_seed(args.seed)
    load_dtype = torch.float32 if args.method == "full" else dtype
    model = AutoModelForCausalLM.from_pretrained(args.model_path, dtype=load_dtype,
                                                 local_files_only=True,
                                                 use_safetensors=True).to(device)
    model.config.use_cache = False
    if args.method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(
            r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.05,
            target_modules="all-linear", task_type="CAUSAL_LM"))
    params = [q for q in model.parameters() if q.requires_grad]
    lr = args.lr or (2e-4 if args.method == "lora" else 2e-5)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = get_cosine_schedule_with_warmup(optimizer, 0, len(steps))
    autocast = (torch.autocast(device.type, dtype=dtype) if dtype != torch.float32
                else contextlib.nullcontext())
    model.train()
    for step, batch in enumerate(steps):
        t0 = time.perf_counter()
        inputs = collate(batch, pad_id, device)
        with autocast:
            loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        value = loss.item()  # syncs (CUDA) before the clock stops
        t = time.perf_counter()
        tokens = sum(len(e["input_ids"]) for e in batch)
        print(json.dumps({"step": step + 1, "t": t, "dt": t - t0, "tokens": tokens,
                          "loss": value}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
