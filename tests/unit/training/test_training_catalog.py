import json

import pytest
import torch

from llm_train_api.training.catalog import (
    MODELS,
    UnknownModel,
    catalog_as_json,
    estimate_memory,
    estimate_memory_for,
    flops_per_token,
    get_model_spec,
    memory_breakdown,
)
from llm_train_api.training.model import GPT, GPTConfig

MINGPT_SHAPES = {
    "gpt-nano": (3, 3, 48), "gpt-micro": (4, 4, 128), "gpt-mini": (6, 6, 192),
    "gopher-44m": (8, 16, 512), "gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024),
    "gpt2-large": (36, 20, 1280), "gpt2-xl": (48, 25, 1600),
}


def test_catalog_has_the_mingpt_family_with_byte_vocab():
    for name, shape in MINGPT_SHAPES.items():
        spec = get_model_spec(name)
        assert (spec.n_layer, spec.n_head, spec.n_embd) == shape
        assert spec.vocab_size == 256
        assert spec.block_size == 1024


@pytest.mark.parametrize("name", ["gpt-nano", "gpt-micro", "gpt-mini"])
def test_analytic_param_count_matches_real_torch_model(name):
    spec = get_model_spec(name)
    model = GPT(GPTConfig.from_spec(spec))
    assert spec.param_count == model.num_parameters()
    # the head is tied, not a second matrix
    assert model.lm_head.weight.data_ptr() == model.wte.weight.data_ptr()


@pytest.mark.parametrize("name", list(MINGPT_SHAPES))
def test_analytic_param_count_matches_torch_for_all_models(name):
    spec = get_model_spec(name)
    with torch.device("meta"):  # shapes only, no memory
        model = GPT(GPTConfig.from_spec(spec))
    assert spec.param_count == model.num_parameters()


def test_gpt2_with_byte_vocab_is_about_86m():
    assert get_model_spec("gpt2").param_count == 86_039_040


def test_unknown_model_is_named():
    with pytest.raises(UnknownModel) as info:
        get_model_spec("gpt5")
    assert "gpt5" in str(info.value) and "gpt-nano" in str(info.value)


def test_memory_estimate_scales_and_refuses_what_cannot_fit():
    small = estimate_memory("gpt-nano", 8, 64)
    assert small < 2**30
    assert estimate_memory("gpt-nano", 16, 64) > small
    assert estimate_memory("gpt-nano", 8, 128) > small
    parts = memory_breakdown("gpt2", 8, 1024)
    n = MODELS["gpt2"].param_count
    assert parts["weights"] == 4 * n and parts["optimizer"] == 8 * n
    assert parts["total"] == sum(v for k, v in parts.items() if k != "total")
    # gpt2-xl: 1.48B params * 16 bytes of state alone exceed an 80 GB GPU at batch 64
    assert estimate_memory("gpt2-xl", 64, 1024) > 80 * 10**9
    assert estimate_memory("gpt2", 8, 1024, "bfloat16") < estimate_memory("gpt2", 8, 1024)


def test_catalog_json_has_counts_and_schema():
    data = json.loads(json.dumps(catalog_as_json()))
    by_name = {m["name"]: m for m in data}
    assert by_name["gpt2"]["param_count"] == 86_039_040
    block = next(p for p in by_name["gpt-nano"]["hyperparameters"] if p["name"] == "block_size")
    assert block["maximum"] == 1024 and block["default"] == 256


def test_flops_per_token_formula():
    spec = MODELS["gpt2"]
    n = spec.param_count - spec.block_size * spec.n_embd
    assert flops_per_token("gpt2", 1024) == 6 * n + 12 * 12 * 768 * 1024


def test_estimate_memory_for_validated_hyperparameters():
    from llm_train_api.training.hyperparams import validate_hyperparameters

    hp = validate_hyperparameters({"batch_size": 4, "block_size": 512}, "gpt2")
    assert estimate_memory_for("gpt2", hp) == estimate_memory("gpt2", 4, 512, "float32")
    hp16 = validate_hyperparameters({"batch_size": 4, "block_size": 512, "dtype": "bfloat16"})
    assert estimate_memory_for("gpt2", hp16) < estimate_memory_for("gpt2", hp)
