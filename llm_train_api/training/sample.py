"""Generate text from a checkpoint (``python -m llm_train_api.training sample ...``).

:func:`sample` returns only the generated continuation, not the prompt. Tokens are
bytes, so a continuation cut inside a multi-byte character ends in U+FFFD. Context is
cropped to the ``block_size`` the model was trained with: later positions never saw a
gradient.
"""

from __future__ import annotations

import os

import torch

from llm_train_api.training.checkpoint import load_checkpoint, model_from_checkpoint
from llm_train_api.training.data import decode, encode


def sample(
    checkpoint_path: str | os.PathLike[str],
    prompt: str = "\n",
    max_new_tokens: int = 200,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
    device: str = "cpu",
) -> str:
    """Continuation of ``prompt``; ``top_k=1`` or ``temperature<=0`` is greedy decoding."""
    if max_new_tokens < 0:
        raise ValueError("max_new_tokens must be >= 0")
    checkpoint = load_checkpoint(checkpoint_path, map_location=device)
    model = model_from_checkpoint(checkpoint, device)
    trained_block = checkpoint.get("config", {}).get("block_size")
    prompt_ids = encode(prompt) or [ord("\n")]
    idx = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k,
                         generator=generator, context_size=trained_block)
    return decode(out[0, len(prompt_ids):].tolist())
