import json
import math

import pytest

from llm_train_api.training.hyperparams import (
    DEFAULTS,
    HyperparameterError,
    hyperparameter_schema,
    validate_hyperparameters,
)


def errors_of(hp, model_name=None):
    with pytest.raises(HyperparameterError) as info:
        validate_hyperparameters(hp, model_name)
    return info.value.errors


def test_seed_example_is_valid_and_defaults_fill_in():
    hp = validate_hyperparameters({"learning_rate": 0.001, "epochs": 5}, "gpt-nano")
    assert hp["learning_rate"] == 0.001 and hp["epochs"] == 5
    assert hp["batch_size"] == DEFAULTS["batch_size"]
    assert set(hp) == set(DEFAULTS)
    assert validate_hyperparameters(None) == DEFAULTS


def test_unknown_key_is_named():
    assert errors_of({"lerning_rate": 0.1}) == {"lerning_rate": ["Unknown hyperparameter."]}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("batch_size", True),  # bools are not ints
        ("epochs", 2.0),
        ("epochs", "5"),
        ("learning_rate", False),
        ("learning_rate", math.nan),
        ("learning_rate", math.inf),
        ("learning_rate", 0),
        ("learning_rate", 1.5),
        ("batch_size", 0),
        ("batch_size", 4097),
        ("block_size", 4),
        ("epochs", 0),
        ("dropout", -0.1),
        ("lr_schedule", "linear"),
        ("dtype", "int8"),
        ("device", "tpu"),
        ("compile", 1),
        ("seed", -1),
        ("batch_size", None),
        ("max_steps", 0),
    ],
)
def test_bad_values_are_rejected_with_the_key(key, value):
    errors = errors_of({key: value})
    assert list(errors) == [key]
    assert errors[key] and all(isinstance(m, str) for m in errors[key])


def test_several_errors_are_reported_together():
    errors = errors_of({"batch_size": "x", "foo": 1, "learning_rate": -1})
    assert set(errors) == {"batch_size", "foo", "learning_rate"}
    assert "batch_size" in str(HyperparameterError(errors))


def test_block_size_bounded_by_model_and_unknown_model_reported():
    assert validate_hyperparameters({"block_size": 1024}, "gpt-nano")["block_size"] == 1024
    assert "block_size" in errors_of({"block_size": 2048})
    assert "model_name" in errors_of({}, "nope")


def test_ints_accepted_for_floats_and_normalised():
    hp = validate_hyperparameters({"learning_rate": 1, "weight_decay": 0, "max_steps": None})
    assert hp["learning_rate"] == 1.0 and isinstance(hp["learning_rate"], float)
    assert hp["max_steps"] is None


def test_not_an_object():
    assert list(errors_of([1, 2])) == ["hyperparameters"]


def test_schema_is_json_and_documents_every_key():
    schema = json.loads(json.dumps(hyperparameter_schema("gpt-nano")))
    names = {p["name"] for p in schema}
    required = {"learning_rate", "epochs", "batch_size", "block_size", "max_steps",
                "warmup_steps", "lr_schedule", "weight_decay", "grad_clip", "dropout",
                "gradient_accumulation_steps", "eval_interval", "eval_steps",
                "checkpoint_interval", "seed", "device", "dtype", "compile", "num_threads"}
    assert required <= names
    for p in schema:
        assert p["doc"] and "default" in p and p["type"]
    lr = next(p for p in schema if p["name"] == "learning_rate")
    assert lr["exclusive_minimum"] == 0 and lr["maximum"] == 1
    dtype = next(p for p in schema if p["name"] == "dtype")
    assert dtype["choices"] == ["auto", "float32", "bfloat16", "float16"]
