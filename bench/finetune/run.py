"""Fine-tuning tokens/s: the service's trainer against a plain transformers + peft loop.

    bench/run finetune [--rounds 3] [--steps 10] [--threads 1] [--no-doc]
    bench/run finetune --gpu [--peak-tflops 989]        # CUDA, a ~0.78B model, bf16

Everything is made here, offline, in a temporary folder: generated support chats
(``datasets/bench-chat.jsonl``), a byte-level BPE tokenizer trained on them with a
ChatML chat template, and a randomly initialised Llama-style model written with
``save_pretrained`` (safetensors). Nothing is downloaded.

Contenders, both fresh subprocesses with the same Python, torch, threads
(``OMP_NUM_THREADS`` and ``torch.set_num_threads``), device and dtype:

* **service**: ``python -m llm_train_api.training.hf run --job-dir DIR --spec FILE``, the
  command a worker runs, with ``log_interval`` 1, no validation, a checkpoint only at the
  end and ``merge_adapter`` off (both after the last timed step). A step's time is the
  difference of consecutive ``elapsed_s`` of its ``metrics`` events (the whole step, with
  its logging: metrics.jsonl and the stdout event).
* **reference**: ``bench/finetune/reference.py``, a plain loop (AutoModelForCausalLM,
  get_peft_model, torch AdamW, transformers' cosine schedule, ``labels=`` loss), fed the
  exact global batches the service draws at each step (computed here with the service's
  own data plan and ``StepBatches``, written to a JSON file). A step's time is the
  difference of consecutive end-of-step timestamps.

Same settings on both sides: packing to ``max_seq_length``, batch size, LoRA r=16,
alpha 32, dropout 0.05, all-linear targets (or full fine-tuning), grad clip 1.0, weight
decay 0. Startup (imports, loading, tokenising) is excluded: the first ``--warmup``
steps are dropped and throughput is the non-pad tokens of the remaining steps over their
wall time. Rounds alternate the order (service first in odd rounds); the ratio is
service / reference per round, reported as the median over rounds. Results go to
docs/benchmarks.md between the bench-finetune markers (``--no-doc``: print only); raw
numbers to bench/results/finetune[-gpu].json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
for _name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[_name] = "1"

DOC = REPO / "docs" / "benchmarks.md"
DATASET = "bench-chat"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<|pad|>", "<|im_start|>", "<|im_end|>"]

#: Llama-style shapes. CPU: ~13.8M parameters (the step is matmuls, not overhead);
#: GPU: ~0.78B (Llama-1B-like width, 24 layers, a 32k vocabulary).
SHAPES = {
    "cpu": {"hidden_size": 384, "intermediate_size": 1024, "num_hidden_layers": 6,
            "num_attention_heads": 6, "num_key_value_heads": 6, "vocab_size": 4096},
    "gpu": {"hidden_size": 1536, "intermediate_size": 4096, "num_hidden_layers": 24,
            "num_attention_heads": 12, "num_key_value_heads": 12, "vocab_size": 32000},
}

# ----------------------------------------------------------------------------- assets

PRODUCTS = ["Acme Notes", "the desktop app", "the mobile app", "the web editor",
            "the sync service", "the team workspace", "the API", "the calendar"]
TOPICS = ["password", "invoice", "subscription", "export", "backup", "shared folder",
          "two-factor login", "notification", "storage quota", "trash", "template",
          "tag", "offline mode", "attachment", "reminder", "language setting"]
VERBS = ["reset", "change", "delete", "restore", "download", "share", "rename", "move",
         "disable", "enable", "find", "recover", "upgrade", "cancel", "sync", "print"]
PLACES = ["Settings", "Profile", "Billing", "Security", "the sidebar", "the toolbar",
          "the account menu", "the help centre", "Preferences", "the admin console"]
FILLERS = ["It takes effect immediately.", "You may need to sign in again.",
           "Changes sync to your other devices within a minute.",
           "Administrators can turn this off for a whole team.",
           "We send a confirmation email when it is done.",
           "Older versions stay available for thirty days.",
           "This works the same on every platform.",
           "If the option is greyed out, your plan does not include it.",
           "Contact support if the problem persists after an hour."]


def conversation(rng: random.Random) -> dict:
    system = (f"You are the support assistant of {rng.choice(PRODUCTS)}. "
              "Answer briefly and precisely.")
    messages = [{"role": "system", "content": system}]
    for _turn in range(rng.choice((1, 1, 2, 3))):
        verb, topic = rng.choice(VERBS), rng.choice(TOPICS)
        product = rng.choice(PRODUCTS)
        user = rng.choice([f"How do I {verb} my {topic} in {product}?",
                           f"Can I {verb} a {topic} from {product}?",
                           f"I cannot {verb} the {topic}. What should I do?",
                           f"Where is the option to {verb} my {topic}?"])
        steps = ", then ".join(rng.sample(PLACES, rng.randint(1, 3)))
        answer = [f"Open {steps}, and choose {verb.capitalize()} {topic}."]
        answer += rng.sample(FILLERS, rng.randint(1, 4))
        messages += [{"role": "user", "content": user},
                     {"role": "assistant", "content": " ".join(answer)}]
    return {"messages": messages}


def write_dataset(data_dir: Path, n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    records = [conversation(rng) for _ in range(n)]
    folder = data_dir / "datasets"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{DATASET}.jsonl", "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return records


def write_tokenizer(folder: Path, records: list[dict], vocab_size: int) -> object:
    """A byte-level BPE trained on the chats, with a ChatML template, as a fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    try:
        from transformers import PreTrainedTokenizerFast
    except ImportError:  # pragma: no cover - transformers without the old name
        from transformers import TokenizersBackend as PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    texts = (m["content"] for r in records for m in r["messages"])
    tok.train_from_iterator(texts, trainer)
    # The trainer added SPECIALS as special tokens (never split, never merged).
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>",
                                 eos_token="<|im_end|>")
    hf.chat_template = CHAT_TEMPLATE
    hf.save_pretrained(folder)
    return hf


def write_model(folder: Path, shape: dict, tokenizer: object, seq: int, gpu: bool) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**{**shape, "vocab_size": max(shape["vocab_size"], len(tokenizer))},
                         max_position_embeddings=max(2048, seq), tie_word_embeddings=False,
                         pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    torch.manual_seed(0)
    with torch.device("cuda" if gpu else "cpu"):
        model = LlamaForCausalLM(config)
    if gpu:
        model.to(torch.bfloat16)  # half the disk; full fine-tuning loads it as float32
    model.save_pretrained(folder, safe_serialization=True)
    n = sum(p.numel() for p in model.parameters())
    del model
    if gpu:
        torch.cuda.empty_cache()  # the contenders need the memory, not this process
    return n


# ----------------------------------------------------------------------------- contenders

def env_for(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env["PYTHONPATH"] = str(REPO)
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


def hyperparameters(args: argparse.Namespace, method: str) -> dict:
    hp = {"method": method, "max_seq_length": args.seq, "packing": True,
          "batch_size": args.batch_size, "max_steps": args.steps, "log_interval": 1,
          "eval_interval": 0, "checkpoint_interval": 0, "val_fraction": 0.0,
          "learning_rate": 2e-4 if method == "lora" else 2e-5, "grad_clip": 1.0,
          "weight_decay": 0.0, "device": args.device, "dtype": args.dtype,
          "num_threads": args.threads, "seed": 42}
    if method == "lora":
        hp["lora"] = {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}
        hp["merge_adapter"] = False
    return hp


def spec_for(args: argparse.Namespace, method: str, model_dir: Path, data_dir: Path) -> dict:
    return {"job_id": f"bench-{method}", "model_name": "bench-llama",
            "model_path": str(model_dir), "dataset": DATASET,
            "hyperparameters": hyperparameters(args, method), "data_dir": str(data_dir)}


def write_batches(spec: dict, path: Path, steps: int) -> list[int]:
    """The service's global batch of every step, from its own data plan; tokens per step."""
    from llm_train_api.training.hf import data as hfdata
    from llm_train_api.training.hf import modeling
    from llm_train_api.training.hf.plan import plan_data
    from llm_train_api.training.hf.spec import validate_spec

    valid = validate_spec(spec)
    hp = valid.hp
    tokenizer = modeling.load_tokenizer(valid.model_path)
    plan = plan_data(valid, tokenizer)
    batches = hfdata.StepBatches(plan.train_seqs, hp["batch_size"], 1, hp["seed"])
    out = [[{"input_ids": e.input_ids, "mask": e.mask} for e in batches.step_sequences(s)[0]]
           for s in range(steps)]
    path.write_text(json.dumps({"pad_id": tokenizer.pad_token_id, "steps": out}))
    return [sum(len(e["input_ids"]) for e in batch) for batch in out]


def steady(times: dict[int, float], tokens: list[int], warmup: int, steps: int
           ) -> dict[str, float]:
    """Step s's wall time = t(s) - t(s-1), for s in warmup+1..steps."""
    dts = [times[s] - times[s - 1] for s in range(warmup + 1, steps + 1)]
    toks = [tokens[s - 1] for s in range(warmup + 1, steps + 1)]
    per_step = sorted(t / d for t, d in zip(toks, dts, strict=True))
    return {"tok_s": sum(toks) / sum(dts), "tok_s_median": statistics.median(per_step),
            "step_s_median": statistics.median(dts), "steps": len(dts)}


def run_service(spec: dict, work: Path, args: argparse.Namespace, tokens: list[int]
                ) -> dict[str, float]:
    from llm_train_api.training.events import parse_line

    job = Path(tempfile.mkdtemp(dir=work, prefix="job-"))
    spec_file = job.parent / f"{job.name}.spec.json"
    spec_file.write_text(json.dumps(spec))
    cmd = [sys.executable, "-m", "llm_train_api.training.hf", "run", "--job-dir", str(job),
           "--spec", str(spec_file)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env_for(args.threads),
                          cwd=REPO, timeout=1800)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"service trainer failed ({proc.returncode}):\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    events = [e for e in map(parse_line, proc.stdout.splitlines()) if e]
    metrics = {e["step"]: e for e in events if e["event"] == "metrics"}
    times = {s: m["elapsed_s"] for s, m in metrics.items()}
    out = steady(times, tokens, args.warmup, args.steps)
    # The trainer's own figure (non-pad tokens of the step over the step without logging).
    out["reported_tok_s_median"] = statistics.median(
        metrics[s]["tokens_per_s"] for s in range(args.warmup + 1, args.steps + 1))
    out["process_wall_s"] = wall
    return out


def run_reference(method: str, model_dir: Path, batches: Path, args: argparse.Namespace,
                  tokens: list[int]) -> dict[str, float]:
    cmd = [sys.executable, str(REPO / "bench" / "finetune" / "reference.py"),
           "--model-path", str(model_dir), "--batches", str(batches), "--method", method,
           "--device", args.device, "--dtype", args.dtype, "--threads", str(args.threads)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env_for(args.threads),
                          cwd=REPO, timeout=1800)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"reference failed ({proc.returncode}):\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    lines = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert [x["tokens"] for x in lines] == tokens, "reference saw other batches"
    out = steady({x["step"]: x["t"] for x in lines}, tokens, args.warmup, args.steps)
    out["process_wall_s"] = wall
    return out


# ----------------------------------------------------------------------------- report

def machine_info(gpu: bool) -> dict[str, str]:
    import peft
    import torch
    import transformers

    cpu = platform.processor()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        cpu = next(ln.split(":", 1)[1].strip() for ln in out.splitlines()
                   if ln.startswith("Model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "logical_cpus": str(os.cpu_count()), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__,
            "python": platform.python_version(),
            "load_avg": " ".join(f"{x:.1f}" for x in os.getloadavg()),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if gpu:
        info["gpu"] = torch.cuda.get_device_name()
    return info


def flops_per_token(shape: dict, vocab: int, seq: int, method: str) -> float:
    """Model FLOPs per trained token (PaLM appendix B style): 6N for full fine-tuning, 4N
    for LoRA (forward 2N plus the input gradients 2N; the frozen weights get none; the
    r=16 adapters add well under 1%), plus attention 12 * layers * width * seq. N counts
    the matmul weights: every linear layer and the LM head, not the embedding lookup."""
    h, i, n_layer = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    kv = h * shape["num_key_value_heads"] // shape["num_attention_heads"]
    n = n_layer * (2 * h * h + 2 * h * kv + 3 * h * i) + vocab * h
    return (6 if method == "full" else 4) * n + 12 * n_layer * h * seq


def report(args: argparse.Namespace, results: dict, info: dict, n_params: int,
           vocab: int) -> str:
    mode = "GPU" if args.gpu else "CPU"
    lines = [f"Run {info['date']} on {info.get('gpu') or info['cpu']} "
             f"({info['logical_cpus']} logical CPUs, load average {info['load_avg']} at the end), "
             f"`{' '.join(['bench/run finetune', *args.argv])}`: torch {info['torch']}, "
             f"transformers {info['transformers']}, peft {info['peft']}, Python "
             f"{info['python']}.", "",
             f"{mode}, {args.dtype}, {args.threads or 'default'} thread(s) each; random "
             f"Llama-style model of {n_params / 1e6:.1f}M parameters "
             f"({args.shape['num_hidden_layers']} layers, width {args.shape['hidden_size']}, "
             f"MLP {args.shape['intermediate_size']}, vocabulary {vocab}); packed chats, "
             f"batch {args.batch_size} x {args.seq} tokens; {args.steps} steps per run, the "
             f"first {args.warmup} dropped; {args.rounds} alternating rounds. tok/s = non-pad "
             "tokens of the timed steps / their wall time (median of rounds); ratio = "
             "service / reference per round, median (per-round ratios listed).", ""]
    head = ("| method | service tok/s | reference tok/s | ratio | per-round ratios "
            "| ratio of median steps |")
    sep = "|---|---:|---:|---:|---|---:|"
    if args.gpu:
        head += " service MFU | reference MFU |"
        sep += "---:|---:|"
    lines += [head, sep]
    for method, r in results.items():
        svc, ref = r["service"], r["reference"]
        ratios = [a["tok_s"] / b["tok_s"] for a, b in zip(svc, ref, strict=True)]
        med = [a["tok_s_median"] / b["tok_s_median"] for a, b in zip(svc, ref, strict=True)]
        s_tok = statistics.median(x["tok_s"] for x in svc)
        r_tok = statistics.median(x["tok_s"] for x in ref)
        r["ratio_median"], r["ratios"] = statistics.median(ratios), ratios
        row = (f"| {method} | {s_tok:,.0f} | {r_tok:,.0f} | **{statistics.median(ratios):.2f}x**"
               f" | {', '.join(f'{x:.2f}' for x in ratios)} | {statistics.median(med):.2f}x |")
        if args.gpu:
            fpt = flops_per_token(args.shape, vocab, args.seq, method)
            r["flops_per_token"] = fpt
            row += (f" {fpt * s_tok / (args.peak_tflops * 1e12):.1%} |"
                    f" {fpt * r_tok / (args.peak_tflops * 1e12):.1%} |")
        lines.append(row)
    if args.gpu:
        lines += ["", f"MFU = FLOPs/token x tok/s / {args.peak_tflops:g} TFLOP/s "
                  "(dense bf16 peak); FLOPs/token = 6N (full) or 4N (LoRA) + "
                  "12 x layers x width x sequence, N = linear and LM-head weights."]
    return "\n".join(lines) + "\n"


def write_doc(text: str, gpu: bool) -> None:
    tag = "bench-finetune-gpu" if gpu else "bench-finetune"
    start, end = f"<!-- {tag}:results:start -->", f"<!-- {tag}:results:end -->"
    block = f"{start}\n{text}{end}"
    doc = DOC.read_text()
    if start in doc:
        head, rest = doc.split(start, 1)
        doc = head + block + rest.split(end, 1)[1]
    else:
        doc = doc.rstrip("\n") + "\n\n## Fine-tuning throughput\n\n" + block + "\n"
    DOC.write_text(doc)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", action="store_true",
                   help="CUDA, bf16, the ~0.78B shape, batch 8 x 1024 (prepared, see docs)")
    p.add_argument("--methods", default="lora,full")
    p.add_argument("--rounds", type=int)
    p.add_argument("--steps", type=int, help="optimizer steps per run")
    p.add_argument("--warmup", type=int, help="first steps not timed")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seq", type=int, help="max_seq_length (packed)")
    p.add_argument("--threads", type=int,
                   help="torch threads each (CPU; default 1: with 2 OpenMP threads on 2 "
                        "shared cores the figures measure the neighbours' load)")
    p.add_argument("--conversations", type=int)
    p.add_argument("--peak-tflops", type=float, default=989.0,
                   help="dense bf16 peak for MFU (H100/H200 SXM 989, A100 312)")
    p.add_argument("--no-doc", action="store_true", help="print only")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    defaults = ({"rounds": 2, "steps": 40, "warmup": 10, "batch_size": 8, "seq": 1024,
                 "threads": 0, "conversations": 6000} if args.gpu else
                {"rounds": 3, "steps": 10, "warmup": 3, "batch_size": 4, "seq": 256,
                 "threads": 1, "conversations": 600})
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.warmup >= args.steps - 1:
        p.error("--warmup must leave at least two timed steps")
    args.device, args.dtype = ("cuda", "bfloat16") if args.gpu else ("cpu", "float32")
    args.shape = SHAPES["gpu" if args.gpu else "cpu"]
    args.out = args.out or REPO / "bench" / "results" / (
        "finetune-gpu.json" if args.gpu else "finetune.json")
    import torch

    if args.gpu and not torch.cuda.is_available():
        print("--gpu: CUDA is not available on this machine.", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = args.methods.split(",")
    results: dict = {m: {"service": [], "reference": []} for m in methods}
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        work = Path(tmp)
        data_dir, model_dir = work / "data", work / "model"
        t0 = time.perf_counter()
        records = write_dataset(data_dir, args.conversations)
        tokenizer = write_tokenizer(model_dir, records, args.shape["vocab_size"])
        n_params = write_model(model_dir, args.shape, tokenizer, args.seq, args.gpu)
        vocab = max(args.shape["vocab_size"], len(tokenizer))
        specs, batch_files, tokens = {}, {}, {}
        for method in methods:
            specs[method] = spec_for(args, method, model_dir, data_dir)
            batch_files[method] = work / f"batches-{method}.json"
            tokens[method] = write_batches(specs[method], batch_files[method], args.steps)
        print(f"assets in {time.perf_counter() - t0:.1f} s: {n_params:,} parameters, "
              f"vocabulary {vocab} (tokenizer {len(tokenizer)}), {len(records)} chats, "
              f"~{statistics.mean(tokens[methods[0]]):.0f} tokens/step", flush=True)
        for rnd in range(args.rounds):
            for method in methods:
                order = (["service", "reference"] if rnd % 2 == 0
                         else ["reference", "service"])
                for who in order:
                    if who == "service":
                        r = run_service(specs[method], work, args, tokens[method])
                    else:
                        r = run_reference(method, model_dir, batch_files[method], args,
                                          tokens[method])
                    results[method][who].append(r)
                    print(f"round {rnd + 1}/{args.rounds} {method:4s} {who:9s} "
                          f"{r['tok_s']:10,.0f} tok/s (median step {r['step_s_median']:.3f} s,"
                          f" process {r['process_wall_s']:.0f} s)", flush=True)
    info = machine_info(args.gpu)
    text = report(args, results, info, n_params, vocab)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    saved = {k: v for k, v in vars(args).items() if k != "out"}
    args.out.write_text(json.dumps({"machine": info, "config": saved, "params": n_params,
                                    "vocab": vocab, "results": results}, indent=2,
                                   default=str))
    print()
    print(text)
    print(f"raw results: {args.out}")
    if not args.no_doc:
        write_doc(text, args.gpu)
        print(f"results written to {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
