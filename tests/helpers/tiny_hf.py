"""A tiny random-initialised Hugging Face model and tokenizer, built and saved locally.

The fine-tuning trainer's tests load these through the real loading code
(``from_pretrained`` with ``local_files_only`` and safetensors), so nothing is downloaded.
The tokenizer is a word-level ``tokenizers`` model over a fixed vocabulary, split on
whitespace, wrapped in ``PreTrainedTokenizerFast`` with a fixed chat template: its token
ids are readable, so the golden tests can state exact positions.
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIAL = ["<unk>", "<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>",
           "<|end|>"]
WORDS = ("hi hello how are you fine thanks what is two plus three four five one six seven "
         "yes no be brief the sky blue red green colour of grass sea again good bye "
         "name my bot i am a").split()
VOCAB = SPECIAL + WORDS
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> "
    "{% endfor %}{% if add_generation_prompt %}<|assistant|> {% endif %}")

QA = [("what is two plus two", "four"), ("what is two plus three", "five"),
      ("what colour is the sky", "blue"), ("what colour is grass", "green"),
      ("what is one plus one", "two"), ("what is the colour of the sea", "blue"),
      ("how are you", "fine thanks"), ("what is my name", "i am a bot")]


def build_tokenizer(folder: Path, chat_template: str | None = CHAT_TEMPLATE):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)},
                                         unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>",
                                        pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(folder)
    return tokenizer


def build_model(folder: Path, *, chat_template: str | None = CHAT_TEMPLATE,
                pickle_only: bool = False) -> Path:
    """A 2-layer Llama of width 32 with the tokenizer above, saved to ``folder``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    build_tokenizer(folder, chat_template)
    config = LlamaConfig(vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, bos_token_id=2, eos_token_id=3,
                         pad_token_id=1, tie_word_embeddings=False,
                         # Under LoRA the output head and the final norm stay frozen, so
                         # their scale bounds the logits: at the usual 0.02 the loss of a
                         # random model of width 32 cannot fall far below log(vocab).
                         initializer_range=0.3)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    if pickle_only:
        config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    else:
        model.save_pretrained(folder, safe_serialization=True)
    return folder


def chat_records(n: int = 32) -> list[dict]:
    """``n`` short conversations over the vocabulary, some with a system message."""
    out = []
    for i in range(n):
        q, a = QA[i % len(QA)]
        messages = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        if i % 3 == 0:
            messages.insert(0, {"role": "system", "content": "be brief"})
        out.append({"messages": messages})
    return out


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def preference_records(n: int = 32, shape: str = "trl") -> list[dict]:
    """``n`` preference pairs over the QA prompts with a learnable preference: the chosen
    answer is the right one followed by ``thanks``, the rejected one ``no``. ``shape``:
    ``trl`` (message lists under prompt/chosen/rejected), ``openai`` (input.messages,
    preferred_output, non_preferred_output) or ``text`` (TRL's three strings)."""
    out = []
    for i in range(n):
        q, a = QA[i % len(QA)]
        good, bad = f"{a} thanks", "no"
        if shape == "text":
            out.append({"prompt": q, "chosen": f" {good}", "rejected": f" {bad}"})
            continue
        prompt = [{"role": "user", "content": q}]
        if i % 3 == 0:
            prompt.insert(0, {"role": "system", "content": "be brief"})
        chosen = [{"role": "assistant", "content": good}]
        rejected = [{"role": "assistant", "content": bad}]
        if shape == "openai":
            out.append({"input": {"messages": prompt}, "preferred_output": chosen,
                        "non_preferred_output": rejected})
        else:
            out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return out
