"""Decoder-only GPT: pre-LayerNorm blocks, causal SDPA attention, GELU MLP, tied embeddings.

Architecture choices and why:

* ``F.scaled_dot_product_attention(is_causal=True)`` picks the fused flash /
  memory-efficient kernel on GPU and the flash CPU kernel, so the T x T score matrix is
  never materialised (the memory estimate in :mod:`.catalog` relies on this).
* Pre-LN (GPT-2) keeps the residual stream un-normalised, which trains stably without
  careful warmup at these sizes.
* The output head shares the token embedding matrix, saving V*C parameters.
* Residual output projections start with std ``0.02/sqrt(2*n_layer)`` (GPT-2 paper) so
  the residual stream's variance does not grow with depth at initialisation.

Training concerns (optimiser, schedule, devices) live in :mod:`.trainer`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llm_train_api.training.catalog import ModelSpec


@dataclass
class GPTConfig:
    n_layer: int
    n_head: int
    n_embd: int
    vocab_size: int = 256
    block_size: int = 1024
    bias: bool = True
    dropout: float = 0.0

    @classmethod
    def from_spec(cls, spec: ModelSpec, dropout: float = 0.0) -> GPTConfig:
        return cls(**spec.model_args(), dropout=dropout)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        # (B, T, 3C) -> 3 x (B, H, T, D) without copies beyond the transpose SDPA wants.
        q, k, v = self.qkv(x).view(b, t, 3, self.n_head, c // self.n_head).permute(
            2, 0, 3, 1, 4
        )
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        y = y.transpose(1, 2).reshape(b, t, c)
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.up = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.down = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(F.gelu(self.up(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        self.register_buffer("pos", torch.arange(config.block_size), persistent=False)
        self.apply(self._init_weights)
        residual_std = 0.02 / math.sqrt(2 * config.n_layer)
        for block in self.blocks:
            nn.init.normal_(block.attn.proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.mlp.down.weight, mean=0.0, std=residual_std)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_parameters(self) -> int:
        # parameters() de-duplicates the tied head/embedding matrix.
        return sum(p.numel() for p in self.parameters())

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        t = idx.shape[1]
        if t > self.config.block_size:
            raise ValueError(f"sequence length {t} > block_size {self.config.block_size}")
        x = self.drop(self.wte(idx) + self.wpe(self.pos[:t]))
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        if targets is None:
            # Generation only needs the last position; skip the (T x V) projection.
            return self.lm_head(x[:, -1:, :]), None
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    def optimizer_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups: decay the matmul weights of the blocks only.

        Biases and LayerNorm gains are scale parameters; shrinking them toward zero fights
        the normalisation. Embeddings (the tied token table doubles as the output head)
        are lookup tables whose rows get sparse gradients, so decaying them mostly erases
        rare tokens (minGPT's grouping).
        """
        embeddings = {id(self.wte.weight), id(self.wpe.weight)}
        decay, no_decay = [], []
        for p in self.parameters():
            if not p.requires_grad:
                continue
            (decay if p.dim() >= 2 and id(p) not in embeddings else no_decay).append(p)
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        context_size: int | None = None,
    ) -> torch.Tensor:
        """Autoregressively extend ``idx`` (B, T). ``temperature <= 0`` means greedy.

        ``context_size`` crops the context to the length the model was trained on;
        positions beyond it were never trained.
        """
        context = min(context_size or self.config.block_size, self.config.block_size)
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -context:])
            logits = logits[:, -1, :].float()
            if temperature <= 0 or top_k == 1:
                next_id = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = F.softmax(logits, dim=-1)
                next_id = torch.multinomial(probs, 1, generator=generator)
            idx = torch.cat((idx, next_id), dim=1)
        return idx
