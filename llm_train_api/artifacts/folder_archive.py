"""A folder's files as an uncompressed tar stream, for downloads: a model
(`GET /models/{name}/archive`) and a fine-tuning job's LoRA adapter
(`GET /jobs/{id}/artifacts/adapter.tar`).

The archive is produced chunk by chunk while it is sent, never built in memory or on
disk: a PAX header per file, the file's bytes, padding to 512 bytes, two zero blocks at the
end. The files are bare names at the top level, so the extracted folder is what
`from_pretrained` loads. Every header is made, and every file opened, before the first byte
goes out: the length is known up front (`Content-Length`), and a model deleted while it
downloads (renamed away, then removed) still streams whole from the open files.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

from llm_train_api.training.hf.spec import OUTPUT_FOLDER

BLOCK = 512
CHUNK = 1024 * 1024
#: A fine-tuning job's adapter: the folder in the job folder, and its name as an artifact.
ADAPTER_FOLDER = "adapter"
ADAPTER_ARTIFACT = "adapter.tar"


class FolderArchive:
    """The tar archive of some files of a folder: `size` bytes, iterated as chunks.

    A WSGI response body: the server calls `close()` when the response ends (or is
    abandoned), which closes the files.
    """

    def __init__(self, folder: Path, names: list[str]) -> None:
        self._files: list[tuple[bytes, int, int]] = []  # (header, size, fd)
        try:
            for name in names:
                fd = os.open(folder / name, os.O_RDONLY)
                st = os.fstat(fd)
                self._files.append((_header(name, st), st.st_size, fd))
        except BaseException:
            self.close()
            raise
        self.size = _total(self._files)

    def __iter__(self) -> Iterator[bytes]:
        for header, size, fd in self._files:
            yield header
            left = size
            while left > 0:
                chunk = os.read(fd, min(CHUNK, left))
                if not chunk:
                    # Truncated since the header was made: end the stream short, which
                    # the client sees against Content-Length, rather than send a lie.
                    raise OSError(f"a file shrank while it was sent ({left} bytes short)")
                left -= len(chunk)
                yield chunk
            if size % BLOCK:
                yield b"\0" * (BLOCK - size % BLOCK)
        yield b"\0" * (2 * BLOCK)

    def close(self) -> None:
        files, self._files = self._files, []
        for _header, _size, fd in files:
            os.close(fd)


def _header(name: str, st: os.stat_result) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = st.st_size, int(st.st_mtime), 0o644
    return info.tobuf(format=tarfile.PAX_FORMAT)


def _total(files: list[tuple[bytes, int, int]]) -> int:
    return sum(len(header) + size + (-size % BLOCK) for header, size, _fd in files) \
        + 2 * BLOCK


def archive_size(folder: Path, names: list[str]) -> int:
    """The length of `FolderArchive(folder, names)` as the files are now."""
    stats = [(name, os.stat(folder / name)) for name in names]
    return _total([(_header(name, st), st.st_size, -1) for name, st in stats])


def visible_files(folder: Path) -> list[str]:
    """The regular files of `folder` that are not hidden, by name (sub-folders and links
    left out)."""
    return sorted(entry.name for entry in os.scandir(folder)
                  if not entry.name.startswith(".") and entry.is_file(follow_symlinks=False))


def adapter_folder(job_dir: Path) -> Path | None:
    """The LoRA adapter a fine-tuning job saved (`output/adapter`), if it has one."""
    folder = job_dir / OUTPUT_FOLDER / ADAPTER_FOLDER
    return folder if folder.is_dir() and not folder.is_symlink() else None


def adapter_archive(job_dir: Path) -> FolderArchive | None:
    """The job's adapter as a tar stream; None when it has none (or it just went away)."""
    folder = adapter_folder(job_dir)
    try:
        return FolderArchive(folder, visible_files(folder)) if folder else None
    except FileNotFoundError:
        return None


def adapter_entry(job_dir: Path) -> tuple[int, float] | None:
    """(archive size, modification time) of the job's adapter, for the artifact list."""
    folder = adapter_folder(job_dir)
    try:
        return (archive_size(folder, visible_files(folder)), folder.stat().st_mtime) \
            if folder else None
    except FileNotFoundError:
        return None
