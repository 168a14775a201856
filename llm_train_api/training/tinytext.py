"""Generator of the built-in ``builtin:tinytext`` dataset (torch-free).

The text is synthetic so it carries no licence or download: a seeded linear congruential
generator (not :mod:`random`, whose algorithms may change between Python versions) picks
words from small fixed vocabularies to build short stories. It has enough structure for a
small model to show a falling loss within a few hundred steps. The shipped file
``data/tinytext.txt`` equals ``generate()``; a test keeps them in sync. Regenerate with
``python -m llm_train_api.training.tinytext > llm_train_api/training/data/tinytext.txt``.
"""

from __future__ import annotations

import sys

_NAMES = ("Ada", "Ben", "Cora", "Dev", "Elin", "Farid", "Greta", "Hugo", "Iris", "Jun")
_PLACES = ("the mill", "the harbour", "the old library", "the market", "the orchard",
           "the lighthouse", "the bakery", "the river bank", "the school", "the hill")
_THINGS = ("a lantern", "a red kite", "a map", "a loaf of bread", "a brass key",
           "a small boat", "a letter", "a basket of apples", "a clock", "a blue book")
_VERBS = ("found", "carried", "lost", "mended", "painted", "hid", "shared", "opened",
          "counted", "returned")
_FEELINGS = ("happy", "tired", "curious", "worried", "proud", "quiet", "brave", "glad")
_TIMES = ("In the morning", "At noon", "In the evening", "Late at night", "On Sunday",
          "After the rain", "Before supper", "When the bell rang")
_WEATHER = ("The sky was grey.", "The sun was warm.", "A cold wind blew from the sea.",
            "Rain fell on the roofs.", "The air smelled of bread.", "Snow covered the road.")


class _Lcg:
    def __init__(self, seed: int) -> None:
        self.state = seed & 0xFFFFFFFF

    def pick(self, options: tuple[str, ...]) -> str:
        self.state = (1664525 * self.state + 1013904223) & 0xFFFFFFFF
        return options[(self.state >> 8) % len(options)]


def _story(rng: _Lcg, number: int) -> str:
    a, b = rng.pick(_NAMES), rng.pick(_NAMES)
    if a == b:
        b = "a friend"
    place, thing, verb = rng.pick(_PLACES), rng.pick(_THINGS), rng.pick(_VERBS)
    lines = [
        f"Story {number}.",
        f"{rng.pick(_TIMES)}, {a} went to {place}. {rng.pick(_WEATHER)}",
        f"There {a} {verb} {thing} and felt {rng.pick(_FEELINGS)}.",
        f'"Look," said {a} to {b}, "I {verb} {thing} at {place}."',
        f'"That is good," said {b}. "Let us take it home."',
        f"So {a} and {b} walked home together, and {b} was {rng.pick(_FEELINGS)}.",
    ]
    return "\n".join(lines) + "\n\n"


def generate(target_bytes: int = 48_000, seed: int = 20240601) -> str:
    """Deterministic synthetic stories, stopping at the first story past ``target_bytes``."""
    rng = _Lcg(seed)
    parts: list[str] = []
    size = 0
    number = 1
    while size < target_bytes:
        story = _story(rng, number)
        parts.append(story)
        size += len(story.encode("utf-8"))
        number += 1
    return "".join(parts)


if __name__ == "__main__":  # pragma: no cover
    sys.stdout.write(generate())
