"""How much memory a fine-tuning run needs, from the model's files alone (no torch): the
admission check of Hugging Face-format models, as catalog.memory_breakdown is for the
built-in ones.

With N parameters, dtype width `a` bytes (`auto` counts as float32, the larger), a
per-process micro-batch of B sequences of T = max_seq_length tokens, L layers of width H,
MLP width I and a vocabulary of V (from config.json):

- weights: `full` keeps float32 master weights (4N, plus 2N of 16-bit copies under
  autocast); `lora` loads the frozen base in the compute dtype (aN); `qlora` in 4 bits
  with its quantisation constants (0.55N);
- trainable state (float32 weights, gradients, both AdamW moments: 16 bytes each):
  `full` trains all N; LoRA trains the adapters only, at most r(8H + 3(H + I)) per layer
  (attention's four projections and the MLP's three, `all-linear`, the most a list of
  modules can add);
- activations, kept for the backward pass under either method: 17·B·T·H·a per layer
  (Korthikanti et al., 2022, as for the built-in models), only B·T·H·a per layer plus one
  layer's 17 with gradient checkpointing; and the logits, their softmax and gradient,
  3·B·T·V·4;
- overhead: a tenth of the rest plus 256 MiB (allocator, CUDA context).

DPO (method ``dpo``) counts as the weights it trains (LoRA, or full with
``dpo.full_weights``), with each micro-batch holding 2B sequences (every pair's chosen and
rejected answers) and, for full weights, a frozen reference copy of the model in the
compute dtype (aN, ``reference``, a component of DPO estimates only); under LoRA the
reference is the base with its adapters disabled, no copy (0), and its forward pass keeps
no activations.

It is an estimate on the high side: sequences shorter than max_seq_length take less.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llm_train_api.artifacts.hf_folder import config_value, read_config
from llm_train_api.training.hf.hyperparams import weights_method

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 4}
HIDDEN_KEYS = ("hidden_size", "n_embd", "d_model", "dim")
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
MLP_KEYS = ("intermediate_size", "n_inner", "ffn_dim", "hidden_dim")
VOCAB_KEYS = ("vocab_size",)


def shape_of(model_path: Path, param_count: int) -> dict[str, int]:
    """L, H, I and V from config.json; where a config lacks one, a guess that errs high
    (a single layer as wide as all the parameters allow)."""
    config = read_config(model_path)
    hidden = config_value(config, HIDDEN_KEYS) or max(1, math.isqrt(param_count))
    layers = config_value(config, LAYER_KEYS) or 1
    return {"layers": layers, "hidden": hidden,
            "mlp": config_value(config, MLP_KEYS) or 4 * hidden,
            "vocab": config_value(config, VOCAB_KEYS) or 32_000}


def memory_breakdown(param_count: int, shape: Mapping[str, int], hp: Mapping[str, Any],
                     micro_batch: int) -> dict[str, int]:
    """Bytes by component (see the module docstring), for validated hyperparameters."""
    n, a = param_count, DTYPE_BYTES[hp["dtype"]]
    layers, hidden, vocab = shape["layers"], shape["hidden"], shape["vocab"]
    method = weights_method(hp)
    if method == "full":
        weights = 4 * n + (2 * n if a == 2 else 0)
        trainable = n
    else:
        weights = int(0.55 * n) if method == "qlora" else a * n
        trainable = hp["lora"]["r"] * layers * (8 * hidden + 3 * (hidden + shape["mlp"]))
    dpo = hp["method"] == "dpo"
    reference = a * n if dpo and method == "full" else 0
    tokens = micro_batch * (2 if dpo else 1) * hp["max_seq_length"]
    per_layer = tokens * hidden * a
    if hp["gradient_checkpointing"]:
        activations = layers * per_layer + 17 * per_layer
    else:
        activations = layers * 17 * per_layer
    activations += 3 * tokens * vocab * 4
    state = 16 * trainable
    subtotal = weights + reference + state + activations
    overhead = subtotal // 10 + 256 * 2**20
    return {"weights": weights, **({"reference": reference} if dpo else {}),
            "trainable_params": trainable, "trainable_state": state,
            "activations": activations, "overhead": overhead, "total": subtotal + overhead}
