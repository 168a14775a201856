"""Records to token ids and loss masks, with the model's own tokenizer and chat template.

What is learnt (``mask[t] == 1``: token ``t`` is a prediction target):

* ``chat``: the assistant messages (``weight`` 1, the default), rendered with
  ``tokenizer.apply_chat_template``. A template is a program, so the assistant spans are
  found by rendering, not by parsing: for assistant message ``i`` the text rendered for
  ``messages[:i]`` with the generation prompt must be a prefix of the text for
  ``messages[:i+1]``, itself a prefix of the whole conversation; the characters between
  the two are the message (with whatever the template puts after it, e.g. an end-of-turn
  token, so the model learns to stop). Tokens overlapping those characters (the fast
  tokenizer's offsets) are targets. A template without that prefix property (one that
  renders earlier turns differently once later ones exist) is refused with
  :class:`TemplateError` rather than trained with a wrong mask.
* ``instruction``: the completion and an end-of-sequence token; the prompt (tokenised
  with the tokenizer's usual special tokens) is context only. Prompt and completion are
  joined as given, without a template: put any separator in the data.
* ``text``: every token, plus an end-of-sequence token.

Sequences longer than ``max_seq_length`` are cut (counted as truncated); one left with no
target after the cut is dropped (counted). The first token of a sequence is never a target
in practice: nothing precedes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llm_train_api.training.formats import CHAT, INSTRUCTION, TEXT, Record
from llm_train_api.training.spec import SpecError


class TemplateError(SpecError):
    """The tokenizer cannot render this data with a reliable loss mask (exit code 2)."""


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    mask: list[int]
    truncated: bool = False

    @property
    def targets(self) -> int:
        """Tokens that carry loss (the first position never does: nothing precedes it)."""
        return sum(self.mask[1:])


def _render(tokenizer: Any, messages: Sequence[dict[str, str]], generation: bool) -> str:
    text = tokenizer.apply_chat_template(list(messages), tokenize=False,
                                         add_generation_prompt=generation)
    if not isinstance(text, str):
        raise TemplateError("The chat template did not render to a string.")
    return text


def chat_spans(tokenizer: Any, messages: Sequence[dict[str, Any]]) -> tuple[str, list[
        tuple[int, int]]]:
    """The rendered conversation and the ``[start, end)`` character spans that are learnt."""
    if not getattr(tokenizer, "chat_template", None):
        raise TemplateError("This is a chat dataset, but the model's tokenizer has no chat "
                            "template; use a model with one (e.g. an instruct model), or "
                            "an instruction or text dataset.")
    clean = [{"role": m["role"], "content": m["content"]} for m in messages]
    full = _render(tokenizer, clean, False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or message.get("weight", 1) == 0:
            continue
        try:
            before = _render(tokenizer, clean[:i], True) if i else ""
        except Exception:  # noqa: BLE001 - a template may refuse an empty conversation
            before = ""
        through = _render(tokenizer, clean[: i + 1], False)
        if not (through.startswith(before) and full.startswith(through)):
            raise TemplateError(
                f"The model's chat template renders earlier turns differently once later "
                f"ones follow (assistant message {i}), so which tokens are the assistant's "
                "cannot be told reliably; use a template that renders conversations "
                "prefix by prefix, or an instruction dataset.")
        spans.append((len(before), len(through)))
    return full, spans


def _eos(tokenizer: Any) -> list[int]:
    eos = tokenizer.eos_token_id
    return [] if eos is None else [int(eos)]


def _ids(tokenizer: Any, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def render_chat(tokenizer: Any, messages: Sequence[dict[str, Any]]) -> Example:
    text, spans = chat_spans(tokenizer, messages)
    if not getattr(tokenizer, "is_fast", False):
        raise TemplateError("Chat datasets need a fast tokenizer (tokenizer.json) for the "
                            "token offsets of the assistant messages.")
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = []
    for start, end in encoded["offset_mapping"]:
        inside = any((start < b and end > a) if end > start else a <= start < b
                     for a, b in spans)
        mask.append(1 if inside else 0)
    return Example(list(encoded["input_ids"]), mask)


def render_instruction(tokenizer: Any, prompt: str, completion: str) -> Example:
    head = _ids(tokenizer, prompt, True) if prompt else _ids(tokenizer, "", True)
    tail = _ids(tokenizer, completion, False) + _eos(tokenizer)
    return Example(head + tail, [0] * len(head) + [1] * len(tail))


def render_text(tokenizer: Any, text: str) -> Example:
    ids = _ids(tokenizer, text, True)
    if not ids or ids[-1] != tokenizer.eos_token_id:
        ids += _eos(tokenizer)
    return Example(ids, [1] * len(ids))


def render(tokenizer: Any, record: Record) -> Example:
    if record.kind == CHAT:
        return render_chat(tokenizer, record.data["messages"])
    if record.kind == INSTRUCTION:
        return render_instruction(tokenizer, record.data["prompt"], record.data["completion"])
    assert record.kind == TEXT, record.kind
    return render_text(tokenizer, record.data["text"])


def truncate(example: Example, max_seq_length: int) -> Example | None:
    """``example`` cut to ``max_seq_length``, or ``None`` if nothing is left to learn."""
    if len(example.input_ids) > max_seq_length:
        example = Example(example.input_ids[:max_seq_length], example.mask[:max_seq_length],
                          truncated=True)
    return example if example.targets else None


def pack(examples: Sequence[Example], max_seq_length: int) -> list[Example]:
    """Consecutive examples joined into sequences of at most ``max_seq_length`` tokens,
    in order, never splitting one. Attention is causal over the whole sequence, so a
    packed example sees the ones before it: the usual trade of packing, for fewer pad
    tokens. Each example ends with its end-of-sequence token, so the model learns where
    one ends."""
    packed: list[Example] = []
    ids: list[int] = []
    mask: list[int] = []
    for example in examples:
        if ids and len(ids) + len(example.input_ids) > max_seq_length:
            packed.append(Example(ids, mask))
            ids, mask = [], []
        ids = ids + example.input_ids
        mask = mask + example.mask
    if ids:
        packed.append(Example(ids, mask))
    return packed
