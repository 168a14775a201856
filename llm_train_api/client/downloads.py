"""Downloads: a job's files, its LoRA adapter, a model; part of :class:`Client`.

Every download streams (never held in memory) into a temporary name beside the target and
is renamed into place once complete, so a failed one leaves nothing behind; a connection
that breaks mid-way starts the download again, under the client's retry policy. Tar
archives (a model, an adapter) are written as a file, or with ``extract`` unpacked as they
arrive into a folder that `from_pretrained` loads. Only plain files with plain names are
unpacked: an archive with anything else (a path, a link, a device) is refused.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, BinaryIO
from urllib.parse import quote

import requests

from llm_train_api.client.errors import ApiConnectionError, UnexpectedResponse
from llm_train_api.client.retry import TRANSIENT, failure_reason

if TYPE_CHECKING:
    from llm_train_api.client.retry import RetryPolicy

CHUNK = 256 * 1024
#: ``progress(n, total)``: n more bytes arrived, of `total` (None when the server did not
#: say).
Progress = Callable[[int, int | None], None]


def seg(value: str) -> str:
    """`value` as one URL path segment."""
    return quote(str(value), safe="")


class Interrupted(ApiConnectionError):
    """The connection broke in the middle of a download: start the download again."""


class Downloads:
    """The download methods of :class:`Client` (which provides `_request`, `url` and
    `retry`)."""

    url: str
    retry: RetryPolicy
    _request: Callable[..., requests.Response]

    def download_artifact(self, job_id: str, name: str,
                          dest: str | os.PathLike[str] | BinaryIO, *,
                          progress: Progress | None = None) -> int:
        """Stream one of the job's files to `dest`: a path (a directory gets the file's
        name) or a binary file object. Returns the bytes written."""
        path = f"/jobs/{seg(job_id)}/artifacts/{seg(name)}"
        if hasattr(dest, "write"):
            return self._download(path, dest, progress)  # type: ignore[arg-type]
        target = Path(dest)  # type: ignore[arg-type]
        if target.is_dir():
            target = target / name
        return self._retried(path, target, extract=False, progress=progress)

    def download_model(self, name: str, out: str | os.PathLike[str] = ".", *,
                       extract: bool = False, owner: str | None = None,
                       progress: Progress | None = None) -> Path:
        """Download the Hugging Face-format model `name` (an import, a MODEL_ROOTS folder,
        a fine-tuned result) as a tar archive: to the file `out`, or `out/NAME.tar` when
        `out` is a folder. With `extract`, unpacked into the new folder `out` (`out/NAME`
        when `out` exists), which `AutoModelForCausalLM.from_pretrained` loads. `owner`
        (admins): that user's model. Returns the file or folder written."""
        path = f"/models/{seg(name)}/archive" + (f"?owner={seg(owner)}" if owner else "")
        target = _target(Path(out), name, extract)
        self._retried(path, target, extract=extract, progress=progress)
        return target

    def download_adapter(self, job_id: str, out: str | os.PathLike[str] = ".", *,
                         extract: bool = False, progress: Progress | None = None) -> Path:
        """Download a fine-tuning job's LoRA adapter (the artifact ``adapter.tar``) like
        :meth:`download_model`: a file, or with `extract` a folder that peft's
        `PeftModel.from_pretrained(base, folder)` loads. Returns what was written."""
        path = f"/jobs/{seg(job_id)}/artifacts/adapter.tar"
        target = _target(Path(out), f"{job_id}-adapter", extract)
        self._retried(path, target, extract=extract, progress=progress)
        return target

    def download_checkpoint(self, job_id: str, step: int,
                            out: str | os.PathLike[str] = ".", *, extract: bool = False,
                            progress: Progress | None = None) -> Path:
        """Download one checkpoint (``GET /jobs/{id}/checkpoints/{step}/archive``, which the
        server sends only once its bytes match the recorded sha256; 409 :class:`Conflict`
        when they do not): a tar file, or with `extract` a folder. Returns what was
        written."""
        path = f"/jobs/{seg(job_id)}/checkpoints/{int(step)}/archive"
        target = _target(Path(out), f"{job_id}-step-{int(step)}", extract)
        self._retried(path, target, extract=extract, progress=progress)
        return target

    def _retried(self, path: str, target: Path, *, extract: bool,
                 progress: Progress | None) -> int:
        """Download `path` to `target` (a file, or with `extract` a folder), through a
        temporary name; a broken connection starts again."""
        part = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            for tries in range(1, self.retry.attempts + 1):
                try:
                    if extract:
                        shutil.rmtree(part, ignore_errors=True)
                        part.mkdir()
                        size = self._download(path, _extract_into(part), progress)
                    else:
                        with open(part, "wb") as out:
                            size = self._download(path, out, progress)
                    break
                except Interrupted:  # (the request itself was retried by _request)
                    if tries >= self.retry.attempts:
                        raise
                    time.sleep(self.retry.delay(tries))
            if extract:
                os.rename(part, target)  # refused if `target` appeared meanwhile
            else:
                os.replace(part, target)
        finally:
            if part.is_dir():
                shutil.rmtree(part, ignore_errors=True)
            else:
                part.unlink(missing_ok=True)
        return size

    def _download(self, path: str, out: IO[bytes] | Callable[[_Body], None],
                  progress: Progress | None = None) -> int:
        """Stream `path` into the file `out`, or hand it to the reader `out`; the bytes
        received. Interrupted when the connection breaks or the body is short."""
        resp = self._request("GET", path, retry=True, stream=True)
        length = resp.headers.get("Content-Length")
        # A Content-Encoding (a proxy's gzip) makes the length the encoded one.
        total = int(length) if length and length.isdigit() \
            and "Content-Encoding" not in resp.headers else None
        body = _Body(resp.iter_content(CHUNK), total, progress)
        try:
            if hasattr(out, "write"):
                while chunk := body.next_chunk():
                    out.write(chunk)  # type: ignore[union-attr]
            else:
                out(body)  # type: ignore[operator]
                body.drain()
            if total is not None and body.size != total:
                raise Interrupted(f"GET {self.url}{path}: {body.size} of {total} bytes")
        except TRANSIENT as exc:
            raise Interrupted(f"GET {self.url}{path}: {failure_reason(exc)}") from None
        finally:
            resp.close()
        return body.size


def _target(out: Path, name: str, extract: bool) -> Path:
    if out.is_dir():
        return out / (name if extract else f"{name}.tar")
    if extract and out.exists():
        raise FileExistsError(f"{out} exists and is not a folder")
    return out


class _Body:
    """A streamed response as a file object (`read`) for tarfile, counting the bytes and
    reporting them to `progress`."""

    def __init__(self, chunks: Iterator[bytes], total: int | None,
                 progress: Progress | None) -> None:
        self._chunks, self._total, self._progress = chunks, total, progress
        self._buffer = b""
        self.size = 0

    def next_chunk(self) -> bytes:
        if self._buffer:
            chunk, self._buffer = self._buffer, b""
            return chunk
        chunk = next(self._chunks, b"")
        self.size += len(chunk)
        if chunk and self._progress:
            self._progress(len(chunk), self._total)
        return chunk

    def read(self, size: int = -1) -> bytes:
        parts, have = [], 0
        while size < 0 or have < size:
            chunk = self.next_chunk()
            if not chunk:
                break
            if size >= 0 and have + len(chunk) > size:
                chunk, self._buffer = chunk[:size - have], chunk[size - have:]
            parts.append(chunk)
            have += len(chunk)
        return b"".join(parts)

    def drain(self) -> None:
        while self.next_chunk():
            pass


def _extract_into(folder: Path) -> Callable[[_Body], None]:
    """A reader that unpacks a tar stream into `folder` as it arrives: plain files with
    plain names only (UnexpectedResponse for anything else)."""

    def extract(body: _Body) -> None:
        try:
            with tarfile.open(fileobj=body, mode="r|") as tar:  # type: ignore[call-overload]
                for member in tar:
                    name = member.name
                    if not member.isreg() or "/" in name or "\\" in name \
                            or name.startswith(".") or not name:
                        raise UnexpectedResponse(f"the archive holds {name!r}, which is "
                                                 "not a plain file: refused")
                    source = tar.extractfile(member)
                    with open(folder / name, "xb") as f:
                        shutil.copyfileobj(source, f, CHUNK)  # type: ignore[misc]
        except (tarfile.TarError, EOFError) as exc:
            raise Interrupted(f"the archive is cut short or corrupt: {exc}") from None

    return extract
