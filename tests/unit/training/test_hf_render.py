"""Rendering and loss masks: golden texts and target positions with a fixed chat template."""

from __future__ import annotations

import pytest

from llm_train_api.training.formats import Record
from llm_train_api.training.hf.render import (
    Example,
    TemplateError,
    pack,
    render,
    render_chat,
    truncate,
)
from tests.helpers.tiny_hf import VOCAB, build_tokenizer

CONVERSATIONS = [
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
     {"role": "assistant", "content": "hello"}],
    [{"role": "user", "content": "what is two plus two"},
     {"role": "assistant", "content": "five", "weight": 0},
     {"role": "user", "content": "no"}, {"role": "assistant", "content": "four"}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
     {"role": "user", "content": "how are you"},
     {"role": "assistant", "content": "fine thanks"}],
]
GOLDEN_TEXT = [
    "<s><|system|> be brief <|end|> <|user|> hi <|end|> <|assistant|> hello <|end|> ",
    "<s><|user|> what is two plus two <|end|> <|assistant|> five <|end|> <|user|> no <|end|> "
    "<|assistant|> four <|end|> ",
    "<s><|user|> hi <|end|> <|assistant|> hello <|end|> <|user|> how are you <|end|> "
    "<|assistant|> fine thanks <|end|> ",
]
GOLDEN_TARGETS = [[9, 10], [15, 16], [5, 6, 13, 14, 15]]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tok"))


def words(ids):
    return [VOCAB[i] for i in ids]


@pytest.mark.parametrize("i", range(3))
def test_golden_chat_text_and_targets(tokenizer, i):
    assert tokenizer.apply_chat_template(
        [{k: v for k, v in m.items() if k != "weight"} for m in CONVERSATIONS[i]],
        tokenize=False) == GOLDEN_TEXT[i]
    example = render_chat(tokenizer, CONVERSATIONS[i])
    assert " ".join(words(example.input_ids)) == GOLDEN_TEXT[i].replace(
        "<s><", "<s> <").strip()
    assert [t for t, m in enumerate(example.mask) if m] == GOLDEN_TARGETS[i]


def test_golden_instruction_and_text(tokenizer):
    ex = render(tokenizer, Record("instruction", {"prompt": "what is two plus three",
                                                  "completion": "five"}, "x"))
    assert words(ex.input_ids) == ["what", "is", "two", "plus", "three", "five", "</s>"]
    assert ex.mask == [0, 0, 0, 0, 0, 1, 1]
    ex = render(tokenizer, Record("text", {"text": "the sky blue"}, "x"))
    assert words(ex.input_ids) == ["the", "sky", "blue", "</s>"] and ex.mask == [1] * 4


def test_chat_needs_a_chat_template(tmp_path):
    bare = build_tokenizer(tmp_path, chat_template=None)
    with pytest.raises(TemplateError, match="no chat template"):
        render_chat(bare, CONVERSATIONS[0])


def test_a_template_without_the_prefix_property_is_refused(tmp_path):
    # Marks the last turn: a conversation's earlier prefixes render differently.
    odd = build_tokenizer(tmp_path, chat_template=(
        "{% for m in messages %}{% if loop.last %}<|end|> {% endif %}<|{{ m['role'] }}|> "
        "{{ m['content'] }} {% endfor %}"))
    with pytest.raises(TemplateError, match="assistant message 1"):
        render_chat(odd, CONVERSATIONS[2])


def test_truncation_counts_and_drops_what_has_nothing_left_to_learn():
    ex = Example([1, 2, 3, 4, 5], [0, 0, 0, 1, 1])
    cut = truncate(ex, 4)
    assert cut == Example([1, 2, 3, 4], [0, 0, 0, 1], truncated=True)
    assert truncate(ex, 3) is None
    assert truncate(ex, 8) is ex


def test_packing_joins_consecutive_examples_without_splitting_one():
    a, b, c = (Example([1] * n, [1] * n) for n in (3, 4, 6))
    packed = pack([a, b, c], 7)
    assert [len(p.input_ids) for p in packed] == [7, 6]
    assert pack([c, a], 8)[0].input_ids == [1] * 6
