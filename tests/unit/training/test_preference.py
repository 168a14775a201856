"""Preference datasets: both shapes detected and normalised, bad records named, and the
golden token positions that carry log-probability in a pair."""

from __future__ import annotations

import pytest

from llm_train_api.training.formats import (
    PREFERENCE,
    FormatError,
    KindDetector,
    preference_pair,
    record_kind,
)
from llm_train_api.training.hf.preference import render_pair, truncate_pair
from llm_train_api.training.hf.render import TemplateError
from tests.helpers.tiny_hf import VOCAB, build_tokenizer

USER = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
GOOD = [{"role": "assistant", "content": "hello"}]
BAD = [{"role": "assistant", "content": "bye"}]
TRL = {"prompt": USER, "chosen": GOOD, "rejected": BAD}
OPENAI = {"input": {"messages": USER}, "preferred_output": GOOD,
          "non_preferred_output": BAD}
TEXT = {"prompt": "what is two plus three", "chosen": "five", "rejected": "six seven"}


@pytest.mark.parametrize("record", [TRL, OPENAI, TEXT, {**TRL, "id": 3},
                                    {**OPENAI, "input": {"messages": USER, "tools": []}}])
def test_both_shapes_are_preference_records(record):
    assert record_kind(record) == PREFERENCE


def test_both_shapes_normalise_to_the_same_pair():
    assert preference_pair(TRL) == preference_pair(OPENAI) == (USER, GOOD, BAD)
    assert preference_pair(TEXT) == ("what is two plus three", "five", "six seven")


@pytest.mark.parametrize(("record", "why"), [
    ({"prompt": "x", "chosen": "y"}, "'rejected' must be a non-empty string"),
    ({"prompt": "x", "chosen": "", "rejected": "z"}, "'chosen' must be a non-empty string"),
    ({"prompt": USER, "chosen": "y", "rejected": BAD}, "'chosen' must be a non-empty list"),
    ({"prompt": 3, "chosen": GOOD, "rejected": BAD}, "'prompt': a string, or a list"),
    ({"prompt": [], "chosen": GOOD, "rejected": BAD}, "'prompt' must be a non-empty list"),
    ({"prompt": [{"role": "bot", "content": "x"}], "chosen": GOOD, "rejected": BAD},
     "prompt[0].role"),
    ({"prompt": USER, "chosen": [{"role": "user", "content": "x"}], "rejected": BAD},
     "chosen[0] must be an assistant message"),
    ({"prompt": USER, "chosen": GOOD,
      "rejected": [{"role": "assistant", "content": "x", "weight": 1}]},
     "rejected[0] must be an assistant message"),
    ({"preferred_output": GOOD, "non_preferred_output": BAD}, "'input' object"),
    ({"input": {"messages": USER}, "preferred_output": GOOD}, "'non_preferred_output'"),
    ({**OPENAI, "prompt": "x"}, "mixes the two preference shapes"),
])
def test_bad_preference_records_say_why(record, why):
    with pytest.raises(ValueError) as info:
        record_kind(record)
    assert why in str(info.value)


def test_a_preference_file_names_its_first_bad_line():
    detector = KindDetector()
    assert detector.check(TRL, 1) == PREFERENCE
    assert detector.check(OPENAI, 2) == PREFERENCE  # the shapes may mix: one kind
    with pytest.raises(FormatError, match=r"^Line 3: .*'rejected'"):
        detector.check({"prompt": "x", "chosen": "y"}, 3)
    with pytest.raises(FormatError, match=r"^Line 4 is a chat record, but the file is "
                                          r"preference"):
        detector.check({"messages": USER + GOOD}, 4)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tok"))


def scored(example):
    """The words of the tokens that carry log-probability."""
    return [VOCAB[t] for t, m in zip(example.input_ids, example.mask, strict=True) if m]


def test_golden_chat_pair_scores_only_the_final_assistant_turn(tokenizer):
    # The prompt's own assistant turn is context; the answer's turn and its <|end|> are
    # scored, as an SFT run would learn them.
    prompt = USER + [{"role": "assistant", "content": "hello"},
                     {"role": "user", "content": "how are you"}]
    pair = render_pair(tokenizer, {"prompt": prompt, "chosen": [
        {"role": "assistant", "content": "fine thanks"}], "rejected": BAD})
    head = ("<s> <|system|> be brief <|end|> <|user|> hi <|end|> <|assistant|> hello "
            "<|end|> <|user|> how are you <|end|> <|assistant|>").split()
    assert [VOCAB[i] for i in pair.chosen.input_ids] == head + ["fine", "thanks", "<|end|>"]
    assert [VOCAB[i] for i in pair.rejected.input_ids] == head + ["bye", "<|end|>"]
    n = len(head)
    assert [t for t, m in enumerate(pair.chosen.mask) if m] == [n, n + 1, n + 2]
    assert [t for t, m in enumerate(pair.rejected.mask) if m] == [n, n + 1]
    assert scored(pair.chosen) == ["fine", "thanks", "<|end|>"]
    assert pair.targets == 5 and not pair.truncated


def test_golden_text_pair_scores_the_answer_and_eos(tokenizer):
    pair = render_pair(tokenizer, TEXT)
    assert [VOCAB[i] for i in pair.chosen.input_ids] == ["what", "is", "two", "plus",
                                                         "three", "five", "</s>"]
    assert pair.chosen.mask == [0, 0, 0, 0, 0, 1, 1]
    assert scored(pair.rejected) == ["six", "seven", "</s>"]
    # The OpenAI shape renders exactly as TRL's conversational one.
    assert render_pair(tokenizer, OPENAI) == render_pair(tokenizer, TRL)


def test_truncation_cuts_each_answer_and_drops_a_pair_left_without_an_answer(tokenizer):
    pair = render_pair(tokenizer, TEXT)  # 7 and 8 tokens
    cut = truncate_pair(pair, 7)
    assert cut is not None and cut.truncated and cut.chosen == pair.chosen
    assert scored(cut.rejected) == ["six", "seven"]
    assert truncate_pair(pair, 5) is None  # nothing of the chosen answer is left


def test_a_message_prompt_needs_a_chat_template(tmp_path):
    plain = build_tokenizer(tmp_path, chat_template=None)
    with pytest.raises(TemplateError, match="no chat template"):
        render_pair(plain, TRL)
    assert scored(render_pair(plain, TEXT).chosen) == ["five", "</s>"]
