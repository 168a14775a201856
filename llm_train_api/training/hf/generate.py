"""Generate text from a Hugging Face-format model folder: a fine-tuned result, an imported
model, extracted from `GET /models/{name}/archive`.

    python -m llm_train_api.training.hf.generate --model DIR --prompt "what is two plus two" --chat

Loads like the fine-tuning trainer (modeling.py): offline, `local_files_only`, safetensors
only, no remote code. Prints the continuation alone (not the prompt) on stdout; exit 2 with
one line on stderr when the folder or the prompt cannot be used. `--chat` renders the
prompt as one user message with the model's chat template and its generation prompt, as a
chat dataset's conversations were rendered in training. `temperature` <= 0 or `top_k` 1 is
greedy decoding.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from llm_train_api.training.events import EXIT_OK, EXIT_USAGE
from llm_train_api.training.hf.modeling import load_tokenizer  # sets the offline switches
from llm_train_api.training.spec import SpecError


def _load(path: Path, device: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    if not (path / "config.json").is_file():
        raise SpecError(f"{path} is not a model folder (no config.json)")
    tokenizer = load_tokenizer(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, use_safetensors=True, trust_remote_code=False,
            dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise SpecError(f"Cannot load the model {path.name!r}: {exc}") from None
    return model.to(device).eval(), tokenizer


def prompt_ids(tokenizer: Any, prompt: str, *, chat: bool) -> list[int]:
    """The token ids generation continues: the prompt as it is, or with `chat` as a user
    message under the model's chat template."""
    if chat:
        if not tokenizer.chat_template:
            raise SpecError("--chat needs a chat template, and this model's tokenizer has "
                            "none: leave --chat out to continue the text as it is.")
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                             tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(prompt)["input_ids"]
    if not ids:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None \
            else tokenizer.eos_token_id
        if start is None:
            raise SpecError("The prompt has no tokens, and the tokenizer no "
                            "beginning-of-sequence token to start from.")
        ids = [start]
    return list(ids)


def generate(model_dir: str | os.PathLike[str], prompt: str, *, chat: bool = False,
             max_new_tokens: int = 200, temperature: float = 1.0, top_k: int | None = None,
             seed: int | None = None, device: str = "cpu") -> str:
    """The continuation of `prompt` by the model in `model_dir` (special tokens left
    out)."""
    import torch

    if max_new_tokens < 0:
        raise SpecError("max_new_tokens must be >= 0")
    model, tokenizer = _load(Path(model_dir), device)
    ids = torch.tensor([prompt_ids(tokenizer, prompt, chat=chat)], device=device)
    greedy = temperature <= 0 or top_k == 1
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": not greedy,
                              "pad_token_id": tokenizer.pad_token_id}
    if not greedy:
        kwargs.update(temperature=temperature, top_k=top_k or 0)
    else:
        kwargs.update(temperature=None, top_k=None, top_p=None)
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llm_train_api.training.hf.generate",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="The model folder.")
    parser.add_argument("--prompt", default="", help="Text to continue.")
    parser.add_argument("--chat", action="store_true",
                        help="Send the prompt as a user message under the chat template.")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    try:
        text = generate(args.model, args.prompt, chat=args.chat,
                        max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                        top_k=args.top_k, seed=args.seed, device=args.device)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    sys.stdout.write(text + "\n")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
