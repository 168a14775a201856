"""Pack a model folder into a tar stream on the fly, for `Client.import_model`.

The archive is produced chunk by chunk while it is sent (never built in memory or on
disk): a PAX header per file, the file's bytes, padding to 512 bytes, two zero blocks at
the end; optionally gzip-compressed as it goes. Symlinks are followed, so a Hugging Face
cache snapshot (links to blobs) packs as plain files. Hidden files (`.gitattributes`)
are left out, and pickle weights are refused here, before anything is sent: the server
refuses them too, and there is no point uploading gigabytes to hear it.
"""

from __future__ import annotations

import os
import tarfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
BLOCK = 512
CHUNK = 1024 * 1024


def model_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The files to send, by name: every visible file of the folder (not its sub-folders,
    which the server refuses). ValueError for pickle weights or a folder without
    config.json."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder")
    files = sorted(p for p in root.iterdir() if not p.name.startswith(".") and p.is_file())
    pickles = [p.name for p in files if p.name.lower().endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise ValueError(f"{root}: pickle weights are refused ({', '.join(pickles)}): "
                         "loading them can run code. Convert them to safetensors, e.g. "
                         "save_pretrained(..., safe_serialization=True).")
    if not any(p.name == "config.json" for p in files):
        raise ValueError(f"{root} has no config.json: not a Hugging Face model folder")
    return files


def _tar_blocks(files: list[Path], progress: Callable[[int], None] | None) -> Iterator[bytes]:
    for path in files:
        info = tarfile.TarInfo(path.name)
        st = path.stat()
        info.size, info.mtime, info.mode = st.st_size, int(st.st_mtime), 0o644
        yield info.tobuf(format=tarfile.PAX_FORMAT)
        sent = 0
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                sent += len(chunk)
                yield chunk
                if progress:
                    progress(len(chunk))
        if sent != info.size:
            raise ValueError(f"{path} changed size while it was sent")
        if sent % BLOCK:
            yield b"\0" * (BLOCK - sent % BLOCK)
    yield b"\0" * (2 * BLOCK)


def pack(files: list[Path], *, compress: bool = False,
         progress: Callable[[int], None] | None = None) -> Iterator[bytes]:
    """The tar archive of `files` (bare names at the top level), as chunks; `progress(n)`
    is called with each n bytes of file data packed."""
    if not compress:
        yield from _tar_blocks(files, progress)
        return
    gz = zlib.compressobj(6, zlib.DEFLATED, 31)  # 31: gzip framing
    for block in _tar_blocks(files, progress):
        if out := gz.compress(block):
            yield out
    yield gz.flush()
