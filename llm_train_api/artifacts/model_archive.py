"""Unpack an uploaded model archive into a staging folder, treating it as hostile.

The archive is a tar stream (plain, or gzip-compressed: told apart by its first bytes),
read once from the request as it arrives: nothing is held in memory but one chunk. Its
files sit at the top level or inside one folder (`tar -C parent -cf - name` and `tar -C
name -cf - .` both work). Each member is checked before a byte of it is written:

- only regular files (and the one enclosing folder): no symbolic or hard links, devices,
  fifos or sparse files;
- no absolute path, no `..`, no nested folders, no duplicate names;
- only the files of a model folder (`hf_folder.check_file_name`), never pickle weights;
- at most MAX_MEMBERS members, and the bytes read from the request and the bytes
  unpacked both counted against `max_bytes` as they go (a compressed bomb stops there).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from llm_train_api.artifacts.hf_folder import check_file_name
from llm_train_api.artifacts.model_errors import InvalidModel, ModelTooLarge

CHUNK_BYTES = 1024 * 1024
MAX_MEMBERS = 1000
GZIP_MAGIC = b"\x1f\x8b"
TAR_MAGIC_OFFSET = 257  # "ustar" in a POSIX (and GNU) tar header
LIMIT_SETTING = "LLM_TRAIN_API_MAX_MODEL_UPLOAD_GB"


@dataclass(frozen=True)
class Unpacked:
    """The files written to the staging folder: name -> (size, sha256)."""

    files: dict[str, tuple[int, str]]

    @property
    def size_bytes(self) -> int:
        return sum(size for size, _sha in self.files.values())

    @property
    def sha256(self) -> str:
        """A hash of the model: over the sorted (name, file sha256) pairs, so that it does
        not depend on the archive's member order or compression."""
        digest = hashlib.sha256()
        for name in sorted(self.files):
            digest.update(f"{name}\0{self.files[name][1]}\n".encode())
        return digest.hexdigest()


class _Body:
    """The request body as a file for tarfile: the bytes peeked at first, then the rest,
    with every byte read counted against the cap."""

    def __init__(self, stream: BinaryIO, limit: int) -> None:
        self._stream = stream
        self._limit = limit
        self._read = 0
        self._head = b""
        while len(self._head) < 512:
            chunk = self._pull(512 - len(self._head))
            if not chunk:
                break
            self._head += chunk

    @property
    def head(self) -> bytes:
        return self._head

    def _pull(self, size: int) -> bytes:
        data = self._stream.read(size)
        self._read += len(data)
        if self._read > self._limit:
            raise ModelTooLarge(f"The archive is larger than {self._limit} bytes "
                                f"({LIMIT_SETTING}).")
        return data

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = CHUNK_BYTES
        if self._head:
            data, self._head = self._head[:size], self._head[size:]
            return data
        return self._pull(size)


def _mode(head: bytes) -> str:
    if head.startswith(GZIP_MAGIC):
        return "r|gz"
    if head[TAR_MAGIC_OFFSET:TAR_MAGIC_OFFSET + 5] == b"ustar":
        return "r|"
    if not head:
        raise InvalidModel("The body is empty: send a tar archive of the model folder.")
    raise InvalidModel("The body is not a tar archive (plain or gzip-compressed).")


class _Layout:
    """Where members may be: at the top, or all inside one folder."""

    def __init__(self) -> None:
        self.folder: str | None = None
        self.flat = False

    def file_name(self, member: tarfile.TarInfo) -> str | None:
        """The bare file name `member` unpacks to; None for the enclosing folder."""
        raw = member.name
        if raw.startswith("/") or PurePosixPath(raw).is_absolute():
            raise InvalidModel(f"{raw}: absolute paths are refused.")
        parts = [p for p in raw.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise InvalidModel(f"{raw}: '..' in a path is refused.")
        if member.isdir():
            if len(parts) > 1 or (parts and not self._enter(parts[0], raw)):
                raise InvalidModel(f"{raw}: nested folders are refused; the files go at "
                                   "the top level or inside one folder.")
            return None
        if len(parts) == 1 and self.folder is None:
            self.flat = True
            return parts[0]
        if len(parts) == 2 and self._enter(parts[0], raw):
            return parts[1]
        raise InvalidModel(f"{raw}: nested folders are refused; the files go at the top "
                           "level or inside one folder.")

    def _enter(self, folder: str, raw: str) -> bool:
        if self.flat or (self.folder is not None and self.folder != folder):
            raise InvalidModel(f"{raw}: the files must all be at the top level or all inside "
                               "one folder.")
        self.folder = folder
        return True


def _check_type(member: tarfile.TarInfo) -> None:
    kind = None
    if member.issym() or member.islnk():
        kind = "links (symbolic or hard) are"
    elif member.ischr() or member.isblk():
        kind = "device files are"
    elif member.isfifo():
        kind = "fifos are"
    elif member.issparse():
        kind = "sparse files are"
    elif not (member.isreg() or member.isdir()):
        kind = f"members of type {member.type!r} are"
    if kind:
        raise InvalidModel(f"{member.name}: {kind} refused; only regular files.")


def unpack(stream: BinaryIO, staging: Path, *, max_bytes: int,
           on_bytes: Callable[[int], None]) -> Unpacked:
    """Unpack the archive in `stream` into the (empty) folder `staging`.

    `on_bytes(total)` is called before each file is written, with the total the files
    will take with it (the caller's quota check).
    Raises InvalidModel, ModelTooLarge, or OSError from the disk; the caller removes
    `staging` on any failure."""
    body = _Body(stream, max_bytes)
    files: dict[str, tuple[int, str]] = {}
    layout = _Layout()
    total = 0
    members = 0
    try:
        with tarfile.open(fileobj=body, mode=_mode(body.head),  # type: ignore[call-overload]
                          bufsize=CHUNK_BYTES) as tar:
            for member in tar:
                members += 1
                if members > MAX_MEMBERS:
                    raise InvalidModel(f"The archive has more than {MAX_MEMBERS} members.")
                _check_type(member)
                name = layout.file_name(member)
                if name is None:
                    continue
                check_file_name(name)
                if name in files:
                    raise InvalidModel(f"{member.name}: appears twice in the archive.")
                if total + member.size > max_bytes:
                    raise ModelTooLarge(f"The model unpacks to more than {max_bytes} bytes "
                                        f"({LIMIT_SETTING}).")
                on_bytes(total + member.size)
                source = tar.extractfile(member)
                if source is None:  # pragma: no cover - regular files always have data
                    raise InvalidModel(f"{member.name}: no data.")
                size, sha = _write(source, staging / name, member.size)
                files[name] = (size, sha)
                total += size
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise InvalidModel(f"The archive is not a valid tar stream: {exc or 'truncated'}.") \
            from None
    return Unpacked(files)


def _write(source: BinaryIO, target: Path, declared: int) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(target, "xb") as out:
        while chunk := source.read(CHUNK_BYTES):
            size += len(chunk)
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    if size != declared:
        raise InvalidModel(f"{target.name}: truncated: {size} of {declared} bytes.")
    return size, digest.hexdigest()
