"""A full disk, for the tests of what an upload or import leaves behind."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from types import ModuleType

import pytest


def full_disk_for(monkeypatch: pytest.MonkeyPatch, module: ModuleType,
                  fails: Callable[[str, str], bool]) -> None:
    """Writes to the files that `module` opens fail as on a full disk (ENOSPC) when
    `fails(path, mode)`; other files work as usual."""
    real_open = open

    class Full:
        def __init__(self, f):
            self._f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    def fake_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return Full(f) if fails(os.fspath(file), mode) else f

    monkeypatch.setattr(module, "open", fake_open, raising=False)
