"""The layer rule of docs/architecture.md, checked on the source: every import in every
module under llm_train_api/ (at any depth: module level, in functions, under
TYPE_CHECKING) is read with `ast` and held against the tables below.

Function-level ("lazy") imports obey the same rules, except where the design asks for
them: the client commands of the CLI load the server commands (and what those need) only
when one runs, and the package's `create_app` loads the API only when called.
Imports under `if TYPE_CHECKING:` count for the layer rule (they are dependencies of the
design) but not for the third-party rules (nothing is loaded).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "llm_train_api"
ROOT = Path(__file__).resolve().parents[2] / PACKAGE
MAX_LINES = 600

# The trainer modules that need neither torch nor numpy (training/__init__.py lists them):
# the API and the other light layers validate and describe jobs with these.
TRAINING_LIGHT = {"training", "training.catalog", "training.datasets", "training.events",
                  "training.formats", "training.hyperparams", "training.launch",
                  "training.lease", "training.manifest", "training.spec", "training.storage",
                  "training.tinytext",
                  "training.hf", "training.hf.hyperparams", "training.hf.spec"}
# CLI modules of the server side: they need the whole service, so the client commands
# (everything else under cli/) load them lazily and stay fast and light.
CLI_SERVER = {"cli.serve", "cli.worker", "cli.tokens"}

EVERY_LAYER = {"domain", "config", "training", "training-light", "store", "artifacts",
               "services", "runtime", "api", "ui", "worker", "client", "cli", "cli-server"}

# Which layers a layer may import. A layer may always import itself.
ALLOWED: dict[str, set[str]] = {
    # The vocabulary (Job, JobStatus, domain errors, principals): depends on nothing.
    "domain": set(),
    # Settings parse the environment; they do not even know the domain.
    "config": set(),
    # The trainer runs on GPU nodes from a bare install: only itself.
    "training": {"training-light"},
    # The trainer's light modules stay light: only each other.
    "training-light": set(),
    # Database plumbing, the API's queries, the worker's queue, tokens, statistics.
    "store": {"domain", "config"},
    # Files under the data dir; reads the trainer's formats through its light modules.
    "artifacts": {"domain", "config", "training-light"},
    # Policy shared by the API and the worker (admission, capacity).
    "services": {"domain", "config", "store", "artifacts", "training-light"},
    # The composition root: builds the store and the artifact store from Settings.
    "runtime": {"domain", "config", "store", "artifacts"},
    # HTTP and the dashboard: anything below, never a worker, the CLI or the client.
    "api": {"domain", "config", "store", "artifacts", "services", "runtime",
            "training-light", "ui"},
    "ui": {"domain", "config", "store", "artifacts", "services", "runtime",
           "training-light", "api"},
    # The worker loop and its executors: launches the trainer, never serves HTTP.
    "worker": {"domain", "config", "store", "artifacts", "services", "training",
               "training-light", "runtime"},
    # The Python client ships alone (`llm-train-api[client]`): nothing from the package.
    "client": set(),
    # Client commands, at module level: click, the client, and the settings' ConfigError
    # (config is standard library only, see FORBIDDEN_EXTERNAL).
    "cli": {"client", "config"},
    # Server commands (serve, up, worker, tokens) wire the whole service together.
    "cli-server": EVERY_LAYER,
    # The package's __init__: `create_app` only, which imports the API lazily.
    "root": set(),
}
# What function-level imports may add, where the design asks for lazy loading.
LAZY_ALLOWED: dict[str, set[str]] = {
    "cli": EVERY_LAYER,  # a command loads what it needs when it runs
    "root": {"api"},  # llm_train_api.create_app
}

WEB = {"flask", "flask_smorest", "werkzeug", "marshmallow", "webargs", "apispec",
       "gunicorn", "prometheus_client"}
SQL = {"sqlalchemy", "psycopg", "psycopg2"}
TORCH = {"torch", "numpy"}
# The Hugging Face stack loads torch (or reads weights): the API describes Hugging
# Face-format models from their files alone.
HF = {"transformers", "peft", "safetensors", "accelerate", "tokenizers", "huggingface_hub"}
# Third-party packages a layer must not load (the API process stays torch-free, the
# trainer and the client never load the web stack, the CLI's client commands start fast).
FORBIDDEN_EXTERNAL: dict[str, set[str]] = {
    "domain": WEB | SQL | TORCH | HF,
    "config": WEB | SQL | TORCH | HF,
    "training": WEB | SQL,
    "training-light": WEB | SQL | TORCH | HF,
    "store": WEB | TORCH | HF,
    "artifacts": WEB | TORCH | HF,
    "services": WEB | TORCH | HF,
    "runtime": WEB | TORCH | HF,
    "api": TORCH | HF,
    "ui": TORCH | HF,
    "worker": WEB,
    "client": WEB | SQL | TORCH | HF,
    "cli": WEB | SQL | TORCH | HF,
    "cli-server": set(),
    "root": WEB | SQL | TORCH | HF,
}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted, without the package prefix
    line: int
    target: str  # the imported name, absolute and dotted
    lazy: bool  # inside a function
    type_only: bool  # under `if TYPE_CHECKING:`


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)  # "" is the package itself


def is_module(dotted: str) -> bool:
    """Whether `llm_train_api.<dotted>` is a module or package of ours."""
    base = ROOT.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(path: Path, source: str | None = None) -> list[Import]:
    """Every import in the module at `path` (its text is `source` when given)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool, type_only: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(name, node.lineno, alias.name, lazy, type_only))
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join([PACKAGE, *base, *([node.module] if node.module else [])])
            else:
                prefix = node.module or ""
            for alias in node.names:
                sub = f"{prefix}.{alias.name}"
                ours = sub.startswith(PACKAGE + ".") and is_module(sub[len(PACKAGE) + 1:])
                found.append(Import(name, node.lineno, sub if ours else prefix, lazy,
                                    type_only))
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for stmt in node.body:
                visit(stmt, lazy, True)
            for stmt in node.orelse:
                visit(stmt, lazy, type_only)
            return
        lazy = lazy or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        for child in ast.iter_child_nodes(node):
            visit(child, lazy, type_only)

    if source is None:
        source = path.read_text(encoding="utf-8")
    visit(ast.parse(source, str(path)), False, False)
    return found


def layer_of(dotted: str) -> str:
    """The layer of `llm_train_api.<dotted>` ("" is the package's __init__)."""
    if dotted == "":
        return "root"
    head = dotted.split(".")[0]
    if head == "training":
        return "training-light" if dotted in TRAINING_LIGHT else "training"
    if head == "cli":
        return "cli-server" if dotted in CLI_SERVER else "cli"
    return head


def target_layer(target: str) -> str:
    inner = target.removeprefix(PACKAGE).removeprefix(".")
    # `from llm_train_api import create_app`: the package offers the API factory only.
    return "api" if inner == "" else layer_of(inner)


def violations() -> list[str]:
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        for imp in imports_of(path):
            layer = layer_of(imp.module)
            where = f"{PACKAGE}/{path.relative_to(ROOT)}:{imp.line}"
            kind = "lazy " if imp.lazy else ""
            if imp.target == PACKAGE or imp.target.startswith(PACKAGE + "."):
                to = target_layer(imp.target)
                allowed = ALLOWED[layer] | {layer}
                if imp.lazy:
                    allowed |= LAZY_ALLOWED.get(layer, set())
                if to not in allowed:
                    found.append(f"{where}: {layer} may not {kind}import {imp.target} ({to})")
                continue
            top = imp.target.split(".")[0]
            if imp.type_only or (imp.lazy and layer in LAZY_ALLOWED):
                continue
            if top in FORBIDDEN_EXTERNAL[layer]:
                found.append(f"{where}: {layer} may not {kind}import {top}")
    return list(dict.fromkeys(found))  # `from x import a, b` is one finding


def test_every_module_has_a_layer():
    layers = {layer_of(module_name(p)) for p in ROOT.rglob("*.py")}
    assert layers <= set(ALLOWED), layers - set(ALLOWED)
    assert set(ALLOWED) == set(FORBIDDEN_EXTERNAL)


def test_no_forbidden_import():
    found = violations()
    assert not found, "imports against the layer rule:\n" + "\n".join(found)


def test_no_module_is_over_600_lines():
    long = {f"{PACKAGE}/{p.relative_to(ROOT)}": n for p in sorted(ROOT.rglob("*.py"))
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


# The checker itself, on small sources: a checker that sees nothing passes every tree.
@pytest.mark.parametrize(("source", "expected"), [
    ("import os\n", [("os", False, False)]),
    ("from llm_train_api.store import jobs\n",
     [("llm_train_api.store.jobs", False, False)]),
    ("from llm_train_api.domain import Job\n", [("llm_train_api.domain", False, False)]),
    ("def f():\n    import flask\n", [("flask", True, False)]),
    ("class C:\n    def m(self):\n        from llm_train_api import api\n",
     [("llm_train_api.api", True, False)]),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from flask import Flask\n",
     [("typing", False, False), ("flask", False, True)]),
    ("try:\n    import torch\nexcept ImportError:\n    torch = None\n",
     [("torch", False, False)]),
])
def test_the_checker_finds_imports_at_any_depth(source, expected):
    got = [(i.target, i.lazy, i.type_only)
           for i in imports_of(ROOT / "store" / "probe.py", source)]
    assert got == expected


def test_relative_imports_resolve_against_the_package():
    source = "from ..domain import Job\nfrom . import tables\n"
    got = [i.target for i in imports_of(ROOT / "store" / "jobs.py", source)]
    assert got == ["llm_train_api.domain", "llm_train_api.store.tables"]


def test_layers_of_names():
    assert target_layer("llm_train_api") == "api"
    assert target_layer("llm_train_api.training.trainer") == "training"
    assert target_layer("llm_train_api.training.spec") == "training-light"
    assert target_layer("llm_train_api.cli.jobs") == "cli"
    assert target_layer("llm_train_api.cli.serve") == "cli-server"
    assert layer_of("") == "root" and layer_of("worker.service") == "worker"
