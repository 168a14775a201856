"""Tiny Hugging Face-format model folders, written by hand (no transformers): a config.json
for a LlamaForCausalLM with tiny sizes, safetensors files per the format (an 8-byte
little-endian header length, a JSON header, the tensor bytes), tokenizer files, and tar
archives of them built in memory."""

from __future__ import annotations

import gzip
import io
import json
import math
import struct
import tarfile
from pathlib import Path

HIDDEN, LAYERS, VOCAB, CONTEXT = 8, 2, 32, 64
DTYPE_BYTES = {"F32": 4, "BF16": 2, "F16": 2}


def safetensors(tensors: dict[str, tuple[str, list[int]]], *, fill: int = 1) -> bytes:
    """A safetensors file holding `tensors` (name -> (dtype, shape)), every byte `fill`."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = math.prod(shape) * DTYPE_BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + bytes([fill]) * offset


def llama_tensors(layers: range = range(LAYERS)) -> dict[str, tuple[str, list[int]]]:
    tensors: dict[str, tuple[str, list[int]]] = {}
    if 0 in layers:
        tensors["model.embed_tokens.weight"] = ("F32", [VOCAB, HIDDEN])
    for i in layers:
        for part in ("q_proj", "k_proj", "v_proj", "o_proj"):
            tensors[f"model.layers.{i}.self_attn.{part}.weight"] = ("F32", [HIDDEN, HIDDEN])
        tensors[f"model.layers.{i}.mlp.up_proj.weight"] = ("F32", [2 * HIDDEN, HIDDEN])
        tensors[f"model.layers.{i}.input_layernorm.weight"] = ("F32", [HIDDEN])
    if LAYERS - 1 in layers:
        tensors["model.norm.weight"] = ("F32", [HIDDEN])
        tensors["lm_head.weight"] = ("F32", [VOCAB, HIDDEN])
    return tensors


def param_count(tensors: dict[str, tuple[str, list[int]]]) -> int:
    return sum(math.prod(shape) for _dtype, shape in tensors.values())


PARAMS = param_count(llama_tensors())


def config(**overrides: object) -> bytes:
    data = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": 2,
            "vocab_size": VOCAB, "max_position_embeddings": CONTEXT, **overrides}
    return json.dumps(data).encode()


def tiny_llama(*, sharded: bool = False, chat_template: bool = True) -> dict[str, bytes]:
    """The files of a tiny Llama folder, name -> bytes."""
    files = {
        "config.json": config(),
        "generation_config.json": b'{"max_new_tokens": 16}',
        "tokenizer.json": json.dumps({"version": "1.0", "model": {"type": "BPE"}}).encode(),
        "special_tokens_map.json": b'{"bos_token": "<s>"}',
        "tokenizer_config.json": json.dumps(
            {"bos_token": "<s>", **({"chat_template": "{{ messages }}"}
                                    if chat_template else {})}).encode(),
    }
    if sharded:
        first, second = llama_tensors(range(0, 1)), llama_tensors(range(1, LAYERS))
        names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
        files[names[0]], files[names[1]] = safetensors(first), safetensors(second, fill=2)
        weight_map = {t: names[0] for t in first} | {t: names[1] for t in second}
        files["model.safetensors.index.json"] = json.dumps(
            {"metadata": {"total_size": 0}, "weight_map": weight_map}).encode()
    else:
        files["model.safetensors"] = safetensors(llama_tensors())
    return files


def write_folder(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def tar_archive(files: dict[str, bytes], *, prefix: str = "", compress: bool = False,
                extra: list[tarfile.TarInfo] | None = None) -> bytes:
    """A tar archive of `files` (under `prefix/` when given), with `extra` members (links,
    devices...) appended; gzip-compressed with `compress`."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        if prefix:
            folder = tarfile.TarInfo(prefix)
            folder.type = tarfile.DIRTYPE
            tar.addfile(folder)
        for name, data in files.items():
            info = tarfile.TarInfo(f"{prefix}/{name}" if prefix else name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for member in extra or []:
            tar.addfile(member, io.BytesIO(b"x" * member.size) if member.isreg() else None)
    raw = buffer.getvalue()
    return gzip.compress(raw) if compress else raw


def member(name: str, kind: bytes = tarfile.REGTYPE, *, size: int = 0,
           linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.linkname = linkname
    return info
