"""The API imports the catalog/schema/dataset/event modules; they must not need torch."""

import subprocess
import sys

from tests.helpers.training import REPO_ROOT, cli_env

CODE = r"""
import sys
sys.modules["torch"] = None  # any "import torch" now raises ImportError
sys.modules["numpy"] = None
import llm_train_api.training as t
from llm_train_api.training.catalog import MODELS, get_model_spec, UnknownModel, estimate_memory
from llm_train_api.training.hyperparams import validate_hyperparameters, HyperparameterError
from llm_train_api.training.hyperparams import hyperparameter_schema
from llm_train_api.training.datasets import resolve_dataset, DatasetError, list_datasets
from llm_train_api.training.events import parse_line, EXIT_PREEMPTED
from llm_train_api.training.storage import open_job_storage
from llm_train_api.training.spec import run_command, write_spec
from llm_train_api.training.catalog import catalog_as_json
from llm_train_api.training.spec import validate_spec, RunSpec, SpecError
spec, hp, path = validate_spec({"model_name": "gpt-nano", "dataset": "builtin:tinytext",
                                "hyperparameters": {"epochs": 2}})
assert hp["epochs"] == 2 and path.name == "tinytext.txt"
assert get_model_spec("gpt2").param_count == 86_039_040
assert validate_hyperparameters({"learning_rate": 0.001, "epochs": 5}, "gpt2")["epochs"] == 5
assert estimate_memory("gpt2", 8, 1024) > 0
assert len(catalog_as_json()) == len(MODELS)
assert resolve_dataset("builtin:tinytext").is_file()
assert t.parse_line('@@llm_train_api {"event": "done"}')["event"] == "done"
assert EXIT_PREEMPTED == 75
assert not any(m.startswith(("torch", "numpy")) and sys.modules[m] is not None
               for m in sys.modules)
print("ok")
"""


def test_torch_free_modules_import_without_torch_or_numpy():
    proc = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True,
                          env=cli_env(), cwd=REPO_ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
