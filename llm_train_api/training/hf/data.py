"""A fine-tuning dataset in memory: examples, the validation split, and batches by step.

Examples are rendered once per run (:mod:`.render`); fine-tuning sets are small next to
pretraining corpora, so no token cache. Batches are a pure function of ``(seed, step)``:
the training sequences are read in a seeded permutation per epoch, one after the other,
so a resumed run draws exactly the batches the uninterrupted run would have drawn, with
no sampler state to save. Under DDP every rank holds the whole set and takes its slice of
each micro-batch, so the global batch is the one-process batch.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llm_train_api.training.datasets import DatasetError, source_files
from llm_train_api.training.formats import PREFERENCE, read_records
from llm_train_api.training.hf.preference import Pair, render_pair, truncate_pair
from llm_train_api.training.hf.render import Example, pack, render, truncate

IGNORE = -100  # the label torch's cross entropy skips


@dataclass
class Prepared:
    """Examples of one dataset and what became of them."""

    examples: list[Any]  # Example, or preference.Pair with pairs=True
    kind: str
    records: int = 0
    truncated: int = 0
    dropped: int = 0
    tokens: int = 0
    sources: list[str] = field(default_factory=list)


def prepare(tokenizer: Any, path: Path, max_seq_length: int, pairs: bool = False
            ) -> Prepared:
    """Render every record of the dataset at ``path``; DatasetError if nothing is left.

    With ``pairs`` (DPO) the dataset must be a preference set and each record becomes a
    :class:`~.preference.Pair`; without, a preference set is refused (it has no single
    answer to learn)."""
    examples: list[Any] = []
    kind, records, truncated, dropped = "", 0, 0, 0
    for record in read_records(source_files(path)):
        kind = record.kind
        if pairs != (kind == PREFERENCE):
            raise DatasetError(
                f"Dataset {path.name!r} is a preference dataset; it trains with method "
                "dpo only." if kind == PREFERENCE else
                f"Dataset {path.name!r} is a {kind} dataset; method dpo needs a preference "
                "dataset (prompt, chosen, rejected).")
        records += 1
        example: Example | Pair | None = (
            truncate_pair(render_pair(tokenizer, record.data), max_seq_length) if pairs
            else truncate(render(tokenizer, record), max_seq_length))
        if example is None:
            dropped += 1
            continue
        truncated += example.truncated
        examples.append(example)
    if not examples:
        raise DatasetError(f"Dataset {path.name!r} leaves no example with tokens to learn "
                           f"at max_seq_length {max_seq_length} ({records} records, "
                           f"{dropped} dropped).")
    return Prepared(examples, kind, records, truncated, dropped,
                    sum(len(e.input_ids) for e in examples))


def split(examples: list[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """(train, validation): a seeded draw of ``fraction`` of the examples is held out."""
    if fraction <= 0 or len(examples) < 2:
        return examples, []
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = min(len(examples) - 1, max(1, round(len(examples) * fraction)))
    held = set(order[:n_val])
    return ([e for i, e in enumerate(examples) if i not in held],
            [e for i, e in enumerate(examples) if i in held])


def sequences(examples: list[Example], max_seq_length: int, packing: bool) -> list[Example]:
    return pack(examples, max_seq_length) if packing else examples


class StepBatches:
    """The global batch of every step, and this rank's slice of it."""

    def __init__(self, seqs: list[Example], batch_size: int, accum: int, seed: int,
                 rank: int = 0, world: int = 1) -> None:
        self.seqs, self.batch_size, self.accum, self.seed = seqs, batch_size, accum, seed
        self.rank, self.world = rank, world
        self._orders: dict[int, list[int]] = {}

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            order = list(range(len(self.seqs)))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            self._orders = {epoch: order}  # one epoch at a time is all a run needs
        return self._orders[epoch]

    def step_sequences(self, step: int) -> list[list[Example]]:
        """The ``accum`` global micro-batches of ``step`` (all ranks' sequences)."""
        n, per_step = len(self.seqs), self.batch_size * self.accum
        out = []
        for micro in range(self.accum):
            start = step * per_step + micro * self.batch_size
            out.append([self.seqs[self._order(p // n)[p % n]]
                        for p in range(start, start + self.batch_size)])
        return out

    def local(self, micro_batch: list[Example]) -> list[Example]:
        share = self.batch_size // self.world
        return micro_batch[self.rank * share:(self.rank + 1) * share]


def targets(batch: list[Example]) -> int:
    return sum(e.targets for e in batch)


def collate(batch: list[Example], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (IGNORE where no loss)."""
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    for row, example in enumerate(batch):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        attention[row, :n] = 1
        mask = torch.tensor(example.mask, dtype=torch.bool)
        labels[row, :n] = torch.where(mask, ids[row, :n], IGNORE)
    return {"input_ids": ids.to(device), "attention_mask": attention.to(device),
            "labels": labels.to(device)}
