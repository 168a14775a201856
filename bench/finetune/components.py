"""Where a fine-tuning step's time goes: the service trainer's pieces against the plain loop's.

    .venv/bin/python bench/finetune/components.py [--threads 2] [--reps 12] [--methods lora,full]

One process, the assets of ``bench/finetune/run.py`` (same model, tokenizer, data and
batches), the step-5 batch of the service's plan. Each piece is timed ``--reps`` times,
the two variants interleaved, median ms:

* forward + backward with the service's loss (``trainer._sums``: logits sliced and cast
  to float32, summed cross entropy, argmax token accuracy; scaled by 1/targets) against
  ``model(..., labels=...).loss`` (transformers' own shifted mean);
* the loss alone on fixed logits, both ways;
* the AdamW step: torch's default (what both sides use) against ``fused=True``;
* collate (the service's ``hfdata.collate``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as ft  # noqa: E402 - the harness: assets and settings


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def measure(method: str, work: Path, args: argparse.Namespace) -> None:
    from llm_train_api.training.hf import data as hfdata
    from llm_train_api.training.hf import modeling
    from llm_train_api.training.hf.plan import plan_data
    from llm_train_api.training.hf.spec import validate_spec
    from llm_train_api.training.hf.trainer import _sums, make_optimizer

    opts = argparse.Namespace(seq=256, batch_size=4, steps=8, device="cpu", dtype="float32",
                              threads=args.threads)
    valid = validate_spec(ft.spec_for(opts, method, work / "model", work / "data"))
    hp = valid.hp
    tok = modeling.load_tokenizer(valid.model_path)
    plan = plan_data(valid, tok)
    batch = hfdata.StepBatches(plan.train_seqs, 4, 1, hp["seed"]).step_sequences(5)[0]
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = modeling.prepare_for_training(
        modeling.load_model(valid.model_path, hp, device, torch.float32), hp, 42)
    model.train()
    params = modeling.trainable_parameters(model)
    inputs = hfdata.collate(batch, tok.pad_token_id, device)
    denom = hfdata.targets(batch)
    null = torch.autocast("cpu", enabled=False)

    def service_fb() -> None:
        loss, _correct = _sums(model, inputs, null)
        (loss / denom).backward()

    def plain_fb() -> None:
        model(**inputs).loss.backward()

    with torch.no_grad():
        logits = model(input_ids=inputs["input_ids"],
                       attention_mask=inputs["attention_mask"]).logits
    labels = inputs["labels"]
    base = model.get_base_model() if hasattr(model, "get_base_model") else model

    def service_loss() -> None:
        lg = logits[:, :-1].float()
        lb = labels[:, 1:]
        torch.nn.functional.cross_entropy(lg.reshape(-1, lg.size(-1)), lb.reshape(-1),
                                          ignore_index=-100, reduction="sum")
        ((lg.argmax(-1) == lb) & (lb != -100)).sum()

    def plain_loss() -> None:
        base.loss_function(logits=logits, labels=labels, vocab_size=base.config.vocab_size)

    plain_fb()  # gradients exist, so both optimizers have state after one step
    default_opt = make_optimizer(params, hp)
    fused_opt = torch.optim.AdamW(list(params.values()), lr=1e-5, fused=True)
    default_opt.step()
    fused_opt.step()
    pieces = {
        "forward+backward, service loss": service_fb,
        "forward+backward, labels= loss": plain_fb,
        "loss on fixed logits, service (slice, float, CE sum, accuracy)": service_loss,
        "loss on fixed logits, transformers' loss_function": plain_loss,
        "AdamW step, default (both sides)": default_opt.step,
        "AdamW step, fused=True": fused_opt.step,
        "collate (service)": lambda: hfdata.collate(batch, tok.pad_token_id, device),
    }
    times: dict[str, list[float]] = {k: [] for k in pieces}
    for rep in range(args.reps + 2):
        items = list(pieces.items())
        for name, fn in (items if rep % 2 == 0 else items[::-1]):
            ms = timed(fn)
            if rep >= 2:
                times[name].append(ms)
        model.zero_grad(set_to_none=False)
    n_train = sum(q.numel() for q in params.values())
    print(f"\n{method}: {n_train:,} trainable parameters, {args.threads} thread(s), "
          f"{sum(len(e.input_ids) for e in batch)} tokens, median of {args.reps} (ms)",
          flush=True)
    for name, ts in times.items():
        print(f"  {name:66s} {statistics.median(ts):9.2f}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=12)
    p.add_argument("--methods", default="lora,full")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-ftcomp-") as tmp:
        work = Path(tmp)
        shape = ft.SHAPES["cpu"]
        records = ft.write_dataset(work / "data", 1200)
        tokenizer = ft.write_tokenizer(work / "model", records, shape["vocab_size"])
        ft.write_model(work / "model", shape, tokenizer, 256, False)
        for method in args.methods.split(","):
            measure(method, work, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
