"""Named GPT configurations the API serves and the trainer builds (torch-free).

Every model uses the byte vocabulary (256 symbols), so sizes are smaller than the
published GPT-2 numbers, which include a 50,257-entry token embedding: ``gpt2`` here has
86,039,040 parameters instead of 124M. ``param_count`` is computed analytically and a test
checks it against the torch module, so the API can quote it without importing torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

BYTE_VOCAB_SIZE = 256


class UnknownModel(KeyError):
    """Raised for a ``model_name`` that is not in :data:`MODELS`."""

    def __init__(self, name: object) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        known = ", ".join(MODELS)
        return f"Unknown model {self.name!r}; known models: {known}."


@dataclass(frozen=True)
class ModelSpec:
    """Architecture of one catalog entry (pre-LN GPT, GELU MLP, tied embeddings)."""

    name: str
    n_layer: int
    n_head: int
    n_embd: int
    vocab_size: int = BYTE_VOCAB_SIZE
    block_size: int = 1024  # max context = size of the positional embedding table
    bias: bool = True  # GPT-2 style biases in Linear and LayerNorm
    description: str = ""

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"{self.name}: n_embd must be divisible by n_head")

    @property
    def param_count(self) -> int:
        """Exact number of trainable parameters (the tied head is counted once)."""
        c, b = self.n_embd, int(self.bias)
        per_block = (
            2 * c * (1 + b)  # ln_1, ln_2 (weight [+ bias])
            + 3 * c * c + 3 * c * b  # qkv projection
            + c * c + c * b  # attention output projection
            + 4 * c * c + 4 * c * b  # mlp up
            + 4 * c * c + c * b  # mlp down
        )
        embeddings = self.vocab_size * c + self.block_size * c
        return embeddings + self.n_layer * per_block + c * (1 + b)  # + final LayerNorm

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def model_args(self) -> dict[str, Any]:
        """Arguments for ``model.GPTConfig`` (without the run-time ``dropout``)."""
        return {
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "n_embd": self.n_embd,
            "vocab_size": self.vocab_size,
            "block_size": self.block_size,
            "bias": self.bias,
        }

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["param_count"] = self.param_count
        return data


_SPECS = (
    ModelSpec("gpt-nano", 3, 3, 48, description="minGPT nano; seconds on a CPU."),
    ModelSpec("gpt-micro", 4, 4, 128, description="minGPT micro."),
    ModelSpec("gpt-mini", 6, 6, 192, description="minGPT mini."),
    ModelSpec("gopher-44m", 8, 16, 512, description="Gopher 44M shape (smaller with bytes)."),
    ModelSpec("gpt2", 12, 12, 768, description="GPT-2 small shape."),
    ModelSpec("gpt2-medium", 24, 16, 1024, description="GPT-2 medium shape."),
    ModelSpec("gpt2-large", 36, 20, 1280, description="GPT-2 large shape."),
    ModelSpec("gpt2-xl", 48, 25, 1600, description="GPT-2 XL shape."),
)

MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}


def get_model_spec(name: object) -> ModelSpec:
    """Return the spec for ``name`` or raise :class:`UnknownModel`."""
    if not isinstance(name, str) or name not in MODELS:
        raise UnknownModel(name)
    return MODELS[name]


_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def memory_breakdown(
    model: str | ModelSpec,
    batch_size: int,
    block_size: int,
    dtype: str = "float32",
) -> dict[str, int]:
    """Bytes a training run needs, by component.

    Parameters, gradients and both AdamW moments are fp32 (autocast keeps master weights
    in fp32). Activations follow Korthikanti et al. (2022): about 34*B*T*C bytes per layer
    in 16-bit with a fused attention kernel (no B*H*T*T score matrix kept), i.e. 17 values
    per B*T*C; plus the logits, their softmax and gradient (3*B*T*V). ``batch_size`` is the
    micro-batch: gradient accumulation re-uses the same activation memory. The estimate is
    deliberately on the high side; ``overhead`` covers allocator fragmentation and the
    CUDA context.
    """
    spec = model if isinstance(model, ModelSpec) else get_model_spec(model)
    n = spec.param_count
    act_bytes = _DTYPE_BYTES.get(dtype, 4)
    tokens = batch_size * block_size
    weights = 4 * n
    grads = 4 * n
    optimizer = 8 * n
    activations = spec.n_layer * 17 * tokens * spec.n_embd * act_bytes
    activations += 3 * tokens * spec.vocab_size * 4 + 2 * tokens * spec.n_embd * act_bytes
    if act_bytes == 2:
        weights += 2 * n  # 16-bit copies of the weights made by autocast
    subtotal = weights + grads + optimizer + activations
    overhead = subtotal // 10 + 256 * 2**20
    return {
        "weights": weights,
        "gradients": grads,
        "optimizer": optimizer,
        "activations": activations,
        "overhead": overhead,
        "total": subtotal + overhead,
    }


def estimate_memory(
    model: str | ModelSpec,
    batch_size: int,
    block_size: int,
    dtype: str = "float32",
) -> int:
    """Total bytes of :func:`memory_breakdown`; compare with free device memory."""
    return memory_breakdown(model, batch_size, block_size, dtype)["total"]


def estimate_memory_for(model: str | ModelSpec, hyperparameters: dict[str, Any]) -> int:
    """:func:`estimate_memory` for a validated hyperparameter dict.

    ``dtype == "auto"`` is counted as float32, the larger of the possibilities.
    """
    dtype = hyperparameters.get("dtype", "auto")
    return estimate_memory(
        model,
        int(hyperparameters["batch_size"]),
        int(hyperparameters["block_size"]),
        "float32" if dtype == "auto" else dtype,
    )


def flops_per_token(model: str | ModelSpec, block_size: int) -> int:
    """Training FLOPs per token: 6*N (non-embedding matmuls) + 12*L*C*T (attention).

    Same accounting as the PaLM paper's MFU appendix; used by the GPU MFU benchmark.
    """
    spec = model if isinstance(model, ModelSpec) else get_model_spec(model)
    n = spec.param_count - spec.block_size * spec.n_embd
    return 6 * n + 12 * spec.n_layer * spec.n_embd * block_size


def catalog_as_json() -> list[dict[str, Any]]:
    """The catalog as JSON-able data for ``GET /models`` (with each model's schema)."""
    from llm_train_api.training.hyperparams import hyperparameter_schema

    return [
        {**spec.to_dict(), "hyperparameters": hyperparameter_schema(spec.name)}
        for spec in MODELS.values()
    ]
