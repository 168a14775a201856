"""Where a job's files live: a local folder, or an fsspec URL (torch-free).

All checkpoint, spec and metrics IO goes through :class:`JobStorage`, so moving job
folders to object storage is a matter of this module only. Local folders are fully
supported: writes go to a temporary file in the same folder, are fsynced and then
``os.replace``-d into place, so readers never see half a checkpoint. URLs (``s3://``,
``gs://``, ``memory://``...) need ``fsspec`` (not a dependency yet); there, writes go to
a temporary name and are moved, and ``append_lines`` rewrites the whole object because
object stores cannot append.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class JobStorage:
    """Interface; see :class:`LocalStorage` for the reference behaviour."""

    location: str

    def uri(self, name: str) -> str:
        raise NotImplementedError

    def local_path(self, name: str) -> Path | None:
        """A filesystem path for ``name`` when the storage is local, else ``None``."""
        return None

    def exists(self, name: str) -> bool:
        raise NotImplementedError

    def read_bytes(self, name: str) -> bytes:
        raise NotImplementedError

    def read_text(self, name: str) -> str:
        return self.read_bytes(name).decode("utf-8")

    @contextlib.contextmanager
    def open_atomic(self, name: str) -> Iterator[IO[bytes]]:
        raise NotImplementedError
        yield  # pragma: no cover

    def write_bytes_atomic(self, name: str, data: bytes) -> None:
        with self.open_atomic(name) as f:
            f.write(data)

    def write_text_atomic(self, name: str, text: str) -> None:
        self.write_bytes_atomic(name, text.encode("utf-8"))

    def append_lines(self, name: str, lines: list[str]) -> None:
        raise NotImplementedError

    def copy(self, src: str, dst: str) -> None:
        self.write_bytes_atomic(dst, self.read_bytes(src))


class LocalStorage(JobStorage):
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.location = str(self.root)

    def uri(self, name: str) -> str:
        return str(self.root / name)

    def local_path(self, name: str) -> Path:
        return self.root / name

    def exists(self, name: str) -> bool:
        return (self.root / name).exists()

    def read_bytes(self, name: str) -> bytes:
        return (self.root / name).read_bytes()

    @contextlib.contextmanager
    def open_atomic(self, name: str) -> Iterator[IO[bytes]]:
        final = self.root / name
        tmp = self.root / f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        fsync_dir(self.root)

    def append_lines(self, name: str, lines: list[str]) -> None:
        if not lines:
            return
        with open(self.root / name, "a", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))
            f.flush()

    def copy(self, src: str, dst: str) -> None:
        with open(self.root / src, "rb") as fin, self.open_atomic(dst) as fout:
            while chunk := fin.read(1 << 22):
                fout.write(chunk)


def fsync_dir(path: Path) -> None:
    """Make the renames in `path` durable (POSIX); not possible, nor needed, on Windows.

    Best effort: the file itself was fsynced before its rename, so a folder that cannot be
    opened or synced costs at most the rename after a power loss, never a torn file."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class FsspecStorage(JobStorage):
    """Job folder behind an fsspec URL. Untested in CI: fsspec is not installed there."""

    def __init__(self, url: str) -> None:
        try:
            import fsspec  # type: ignore[import-not-found]
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise RuntimeError(
                f"Job folder {url!r} is a URL; install fsspec (and its backend) to use it."
            ) from exc
        self.fs: Any
        self.fs, self.root = fsspec.core.url_to_fs(url)
        self.location = url
        self.fs.makedirs(self.root, exist_ok=True)

    def _path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def uri(self, name: str) -> str:
        return f"{self.location.rstrip('/')}/{name}"

    def exists(self, name: str) -> bool:
        return bool(self.fs.exists(self._path(name)))

    def read_bytes(self, name: str) -> bytes:
        with self.fs.open(self._path(name), "rb") as f:
            return f.read()

    @contextlib.contextmanager
    def open_atomic(self, name: str) -> Iterator[IO[bytes]]:
        tmp = self._path(f".{name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            with self.fs.open(tmp, "wb") as f:
                yield f
            self.fs.mv(tmp, self._path(name))
        except BaseException:
            with contextlib.suppress(Exception):
                self.fs.rm(tmp)
            raise

    def append_lines(self, name: str, lines: list[str]) -> None:
        if not lines:
            return
        old = self.read_bytes(name) if self.exists(name) else b""
        new = "".join(line + "\n" for line in lines).encode("utf-8")
        self.write_bytes_atomic(name, old + new)


def open_job_storage(location: str | os.PathLike[str]) -> JobStorage:
    """Local folder for paths and ``file://`` URLs, :class:`FsspecStorage` otherwise."""
    text = os.fspath(location)
    if text.startswith("file://"):
        return LocalStorage(text[len("file://") :])
    if _URL_RE.match(text):
        return FsspecStorage(text)
    return LocalStorage(text)
