"""How many examples a property test runs: its full count in `make test` (and CI), a
quarter under the `quick` hypothesis profile that `make test-unit` loads, so that the
in-process tier stays a quick check while the full suite keeps its depth."""

from __future__ import annotations

from hypothesis import settings

settings.register_profile("quick", max_examples=25)  # hypothesis' default profile: 100


def example_count(full: int) -> int:
    """`full` under the default profile, scaled down with the loaded profile's count."""
    return max(5, full * settings.default.max_examples // 100)
