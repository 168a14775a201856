"""The app's cached coroutine check answers as Flask's own, call after call."""

from __future__ import annotations

import pytest


def test_sync_functions_and_methods_pass_through_and_coroutines_do_not(app) -> None:
    def view() -> str:
        return "ok"

    class Resource:
        def get(self) -> str:
            return "ok"

    async def coroutine_view() -> str:
        return "ok"

    resource = Resource()
    for _ in range(2):  # the second call answers from the cache
        assert app.ensure_sync(view) is view
        assert app.ensure_sync(resource.get) == resource.get
        try:
            wrapped = app.ensure_sync(coroutine_view)
        except RuntimeError as exc:  # Flask's answer without its async extra installed
            assert "async" in str(exc)
        else:
            assert wrapped is not coroutine_view


def test_an_unhashable_callable_is_left_to_flask(app) -> None:
    class Unhashable:
        __hash__ = None  # type: ignore[assignment]

        def __call__(self) -> str:
            return "ok"

    func = Unhashable()
    with pytest.raises(TypeError):
        hash(func)
    assert app.ensure_sync(func) is func
