"""Preference pairs to token ids and loss masks, for DPO.

A pair is the prompt rendered twice, once with each answer, with :mod:`.render`'s own
masking, so exactly the tokens an SFT run would learn from that answer carry
log-probability here: with a string prompt, the answer and an end-of-sequence token
(as ``instruction`` data); with a message-list prompt, the answer's assistant turns as the
chat template renders them, end-of-turn tokens included (as ``chat`` data; the prompt's
own assistant turns are context). Each answer is cut to ``max_seq_length`` on its own
(the pair counts as truncated); a pair where either answer has no token left is dropped.

Torch-free, like :mod:`.render`: the dry run uses it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llm_train_api.training.formats import preference_pair
from llm_train_api.training.hf.render import Example, render_chat, render_instruction, truncate


@dataclass(frozen=True)
class Pair:
    """A prompt with its chosen and rejected answers, each a sequence of its own."""

    chosen: Example
    rejected: Example

    @property
    def truncated(self) -> bool:
        return self.chosen.truncated or self.rejected.truncated

    @property
    def input_ids(self) -> list[int]:
        """Both sequences' tokens: what a pair costs to run, for the token counts."""
        return self.chosen.input_ids + self.rejected.input_ids

    @property
    def targets(self) -> int:
        return self.chosen.targets + self.rejected.targets


def _answer(tokenizer: Any, prompt: str | list[dict[str, Any]], answer: Any) -> Example:
    if isinstance(prompt, str):
        return render_instruction(tokenizer, prompt, answer)
    context = [{**m, "weight": 0} if m["role"] == "assistant" else m for m in prompt]
    return render_chat(tokenizer, context + list(answer))


def render_pair(tokenizer: Any, record: dict[str, Any]) -> Pair:
    """The pair of a preference record (either shape; :func:`preference_pair`)."""
    prompt, chosen, rejected = preference_pair(record)
    return Pair(_answer(tokenizer, prompt, chosen), _answer(tokenizer, prompt, rejected))


def truncate_pair(pair: Pair, max_seq_length: int) -> Pair | None:
    """``pair`` with each answer cut to ``max_seq_length``, or ``None`` (dropped) if either
    is left without a token to score."""
    chosen = truncate(pair.chosen, max_seq_length)
    rejected = truncate(pair.rejected, max_seq_length)
    if chosen is None or rejected is None:
        return None
    return Pair(chosen, rejected)
