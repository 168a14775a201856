"""GET /models and /models/{name}: the trainer's catalog with hyperparameter schemas."""

from __future__ import annotations

from llm_train_api.training.catalog import MODELS


def test_list_models_is_the_catalog_with_schemas(client):
    resp = client.get("/models")
    assert resp.status_code == 200
    models = resp.get_json()
    assert [m["name"] for m in models] == list(MODELS)
    nano = models[0]
    assert nano["param_count"] == MODELS["gpt-nano"].param_count == 146_352
    assert {"n_layer", "n_head", "n_embd", "vocab_size", "block_size", "description",
            "hyperparameters"} <= set(nano)
    params = {p["name"]: p for p in nano["hyperparameters"]}
    assert params["learning_rate"]["type"] == "number"
    assert params["learning_rate"]["exclusive_minimum"] == 0
    assert params["block_size"]["maximum"] == 1024
    assert params["lr_schedule"]["choices"] == ["cosine", "constant"]
    assert params["max_steps"]["nullable"] is True and params["max_steps"]["default"] is None


def test_get_one_model(client):
    resp = client.get("/models/gpt2")
    assert resp.status_code == 200
    assert resp.get_json()["param_count"] == 86_039_040


def test_unknown_model_is_a_json_404(client):
    resp = client.get("/models/gpt-5")
    assert resp.status_code == 404 and resp.mimetype == "application/json"
    assert "gpt-nano" in resp.get_json()["message"]


def test_openapi_describes_models(client):
    schemas = client.get("/openapi.json").get_json()["components"]["schemas"]
    assert {"name", "param_count", "hyperparameters"} <= set(schemas["Model"]["properties"])
    assert "choices" in schemas["Hyperparameter"]["properties"]
