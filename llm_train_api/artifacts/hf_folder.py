"""What a Hugging Face-format model folder holds, read without transformers or torch.

The files a causal LM needs are few and named by convention: `config.json`, the weights as
`*.safetensors` (sharded ones with `model.safetensors.index.json`), tokenizer files, and
optionally `generation_config.json` and a chat template. Everything else is refused in an
upload (`check_file_name`): in particular pickle weights (`*.bin`, `*.pt`, ...), which run
code when loaded.

A safetensors file is an 8-byte little-endian header length, a JSON header naming each
tensor's dtype, shape and byte range, then the tensors' bytes. Reading the header is
enough to count parameters and to check that the file is whole: the byte ranges must
tile the data exactly, each as long as its shape and dtype say.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from llm_train_api.artifacts.model_errors import InvalidModel

CONFIG = "config.json"
INDEX = "model.safetensors.index.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
# A tokenizer needs one of these (vocab.json goes with merges.txt for byte-level BPE).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json",
                   "vocab.txt")
ALLOWED_FILES = frozenset({
    CONFIG, INDEX, TOKENIZER_CONFIG, *CHAT_TEMPLATE_FILES, *TOKENIZER_FILES,
    "generation_config.json", "special_tokens_map.json", "added_tokens.json", "merges.txt",
    "README.md", "LICENSE", "LICENSE.md", "LICENSE.txt", "NOTICE", "USE_POLICY.md",
})
WEIGHTS_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*\.safetensors$")
# Formats that unpickle, and so may run code, when loaded.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
CAUSAL_SUFFIX = "ForCausalLM"
# How far JSON files are read: configs are small; tokenizer configs carry chat templates.
MAX_CONFIG_BYTES = 1024 * 1024
MAX_JSON_BYTES = 64 * 1024 * 1024
# The safetensors library's own bound on a header.
MAX_HEADER_BYTES = 100_000_000
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
               "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4,
               "I64": 8, "U64": 8, "F64": 8}
# Where configs state the longest context, in the order models use them.
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "seq_length",
                "max_seq_len", "max_sequence_length")


@dataclass(frozen=True)
class Description:
    """What GET /models says about a model folder, besides its name, size and hash."""

    architecture: str
    model_type: str | None
    param_count: int
    context_length: int | None
    vocab_size: int | None
    has_chat_template: bool


def is_pickle(name: str) -> bool:
    return name.lower().endswith(PICKLE_SUFFIXES)


def is_model_file(name: str) -> bool:
    """Whether `name` (a bare file name) belongs in a model folder."""
    return name in ALLOWED_FILES or bool(WEIGHTS_PATTERN.match(name))


def check_file_name(name: str) -> None:
    """InvalidModel unless `name` is a file a model folder may hold. Called before a byte
    of the file is written."""
    if is_pickle(name):
        raise InvalidModel(f"{name}: pickle weights ({', '.join(PICKLE_SUFFIXES)}) are "
                           "refused, since loading them can run code; convert them to "
                           "safetensors.")
    if not is_model_file(name):
        raise InvalidModel(f"{name}: not a file of a Hugging Face model folder. Expected "
                           "config.json, *.safetensors (with model.safetensors.index.json "
                           "when sharded), tokenizer files, generation_config.json, a chat "
                           "template, README.md or a LICENSE.")


def _load_json(path: Path, limit: int) -> Any:
    size = path.stat().st_size
    if size > limit:
        raise InvalidModel(f"{path.name}: {size} bytes, more than the {limit} read.")
    try:
        return orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise InvalidModel(f"{path.name}: not valid JSON ({exc}).") from None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def config_value(config: dict[str, Any], keys: Iterable[str]) -> int | None:
    """The first integer under `keys`, in the config or its `text_config` (multimodal
    configs keep the language model's figures there)."""
    for scope in (config, config.get("text_config")):
        if isinstance(scope, dict):
            for key in keys:
                value = _int(scope.get(key))
                if value is not None and value > 0:
                    return value
    return None


def read_config(folder: Path) -> dict[str, Any]:
    config = _load_json(folder / CONFIG, MAX_CONFIG_BYTES)
    if not isinstance(config, dict):
        raise InvalidModel(f"{CONFIG}: must be a JSON object.")
    return config


def causal_architecture(config: dict[str, Any]) -> str:
    architectures = config.get("architectures")
    if isinstance(architectures, list):
        for name in architectures:
            if isinstance(name, str) and name.endswith(CAUSAL_SUFFIX):
                return name
    raise InvalidModel(f"{CONFIG}: `architectures` must name a causal language model (a "
                       f"class ending in {CAUSAL_SUFFIX}, such as LlamaForCausalLM); got "
                       f"{architectures!r}.")


def _shape(name: str, tensor: str, shape: Any) -> list[int]:
    if not isinstance(shape, list) or any(_int(d) is None or d < 0 for d in shape):
        raise InvalidModel(f"{name}: tensor {tensor!r} has an invalid shape {shape!r}.")
    return shape


def read_safetensors_header(path: Path) -> dict[str, int]:
    """Each tensor's element count, from the header, once the header is checked against
    the file: every byte range as long as its dtype and shape say, and the ranges tiling
    the data after the header exactly (no gap, no overlap, nothing missing or extra)."""
    name = path.name
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise InvalidModel(f"{name}: truncated: {size} bytes, shorter than the 8-byte "
                               "header length of a safetensors file.")
        header_len = int.from_bytes(prefix, "little")
        if header_len > MAX_HEADER_BYTES:
            raise InvalidModel(f"{name}: header of {header_len} bytes, more than "
                               f"{MAX_HEADER_BYTES}.")
        if 8 + header_len > size:
            raise InvalidModel(f"{name}: truncated: the header says {header_len} bytes but "
                               f"the file has only {size - 8} after the length.")
        raw = f.read(header_len)
    try:
        header = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidModel(f"{name}: the safetensors header is not valid JSON ({exc}).") \
            from None
    if not isinstance(header, dict):
        raise InvalidModel(f"{name}: the safetensors header must be a JSON object.")
    data_bytes = size - 8 - header_len
    counts: dict[str, int] = {}
    spans: list[tuple[int, int, str]] = []
    for tensor, entry in header.items():
        if tensor == "__metadata__":
            continue
        if not isinstance(entry, dict) or entry.get("dtype") not in DTYPE_BYTES:
            raise InvalidModel(f"{name}: tensor {tensor!r} has no known dtype "
                               f"({', '.join(DTYPE_BYTES)}).")
        elements = math.prod(_shape(name, tensor, entry.get("shape")))
        offsets = entry.get("data_offsets")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or any(_int(o) is None for o in offsets) or not 0 <= offsets[0] <= offsets[1]):
            raise InvalidModel(f"{name}: tensor {tensor!r} has invalid data_offsets "
                               f"{offsets!r}.")
        begin, end = offsets
        expected = elements * DTYPE_BYTES[entry["dtype"]]
        if end - begin != expected:
            raise InvalidModel(f"{name}: tensor {tensor!r} takes {end - begin} bytes but its "
                               f"shape and dtype need {expected}.")
        counts[tensor] = elements
        spans.append((begin, end, tensor))
    if not counts:
        raise InvalidModel(f"{name}: holds no tensors.")
    position = 0
    for begin, end, tensor in sorted(spans):
        if begin != position:
            raise InvalidModel(f"{name}: tensor {tensor!r} starts at byte {begin} of the "
                               f"data, expected {position} (overlapping or gapped offsets).")
        position = end
    if position != data_bytes:
        raise InvalidModel(f"{name}: the tensors take {position} bytes but the file holds "
                           f"{data_bytes} after its header (truncated or padded).")
    return counts


def _param_count(folder: Path, weights: list[str], names: set[str]) -> int:
    headers = {w: read_safetensors_header(folder / w) for w in weights}
    if INDEX not in names:
        if len(weights) > 1:
            raise InvalidModel(f"Several weight files ({', '.join(weights)}) need {INDEX} "
                               "to say which tensor is where.")
        return sum(headers[weights[0]].values())
    index = _load_json(folder / INDEX, MAX_JSON_BYTES)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map or not all(
            isinstance(v, str) for v in weight_map.values()):
        raise InvalidModel(f"{INDEX}: needs a non-empty `weight_map` object of tensor name "
                           "to file name.")
    for tensor, file in weight_map.items():
        if file not in headers:
            raise InvalidModel(f"{INDEX}: names {file!r} (for {tensor!r}), which is not in "
                               "the model folder.")
        if tensor not in headers[file]:
            raise InvalidModel(f"{INDEX}: puts {tensor!r} in {file}, whose header has no "
                               "such tensor.")
    unnamed = sorted(set(weights) - set(weight_map.values()))
    if unnamed:
        raise InvalidModel(f"{', '.join(unnamed)}: not named by {INDEX}.")
    return sum(sum(counts.values()) for counts in headers.values())


def _has_chat_template(folder: Path, names: set[str]) -> bool:
    if any(name in names for name in CHAT_TEMPLATE_FILES):
        return True
    if TOKENIZER_CONFIG not in names:
        return False
    config = _load_json(folder / TOKENIZER_CONFIG, MAX_JSON_BYTES)
    if not isinstance(config, dict):
        raise InvalidModel(f"{TOKENIZER_CONFIG}: must be a JSON object.")
    return bool(config.get("chat_template"))


def describe(folder: Path, names: Iterable[str]) -> Description:
    """Check the model folder made of the files `names` and describe it (InvalidModel
    naming the first problem found)."""
    present = set(names)
    if CONFIG not in present:
        raise InvalidModel(f"No {CONFIG}: a Hugging Face model folder needs one.")
    config = read_config(folder)
    architecture = causal_architecture(config)
    weights = sorted(n for n in present if WEIGHTS_PATTERN.match(n))
    if not weights:
        raise InvalidModel("No weights: a model folder needs *.safetensors files.")
    if not any(name in present for name in TOKENIZER_FILES):
        raise InvalidModel(f"No tokenizer: expected one of {', '.join(TOKENIZER_FILES)}.")
    model_type = config.get("model_type")
    return Description(
        architecture=architecture,
        model_type=model_type if isinstance(model_type, str) else None,
        param_count=_param_count(folder, weights, present),
        context_length=config_value(config, CONTEXT_KEYS),
        vocab_size=config_value(config, ("vocab_size",)),
        has_chat_template=_has_chat_template(folder, present),
    )
