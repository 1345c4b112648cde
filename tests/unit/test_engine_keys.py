"""The changelog key's text never changes (compaction keeps one value per key's bytes),
and row keys sort the same way whatever their types."""

from __future__ import annotations

import json
import random
from datetime import date

from streams.engine import changelog_key
from streams.state import sort_key, sorted_keys


def _stdlib(*parts: object, tag: str = "") -> str:
    return json.dumps([tag, *parts] if tag else list(parts), ensure_ascii=False)


def test_every_code_point_is_escaped_as_the_stdlib_does() -> None:
    for start in range(0, 0x110000, 0x800):
        text = "".join(chr(c) for c in range(start, start + 0x800) if not 0xD800 <= c < 0xE000)
        assert changelog_key(text, "x", tag="e") == _stdlib(text, "x", tag="e"), hex(start)
    for c in range(0x80):  # each ASCII character alone, controls and quotes included
        assert changelog_key(chr(c), f"a{chr(c)}b") == _stdlib(chr(c), f"a{chr(c)}b"), c


def test_mixed_parts_give_the_stdlib_text() -> None:
    rng = random.Random(7)
    samples: list[tuple[object, ...]] = [
        (),
        ("tenant", 0),
        ("t", -12, None),
        ("t", 2**70),
        ("t", 1.5),
        ("t", True),
        ("t", False, None),
        ("t", [1, "a"]),
        ("ü\u2028\x7f", '"\\/\n\t'),
    ]
    for _ in range(200):
        samples.append(
            tuple(
                rng.choice(
                    [
                        None,
                        rng.randint(-(10**12), 10**12),
                        "".join(
                            chr(rng.randint(0, 0x2FFF)) for _ in range(rng.randint(0, 12))
                        ).replace("\ud800", ""),
                    ]
                )
                for _ in range(rng.randint(0, 4))
            )
        )
    for parts in samples:
        for tag in ("", "email", "é"):
            assert changelog_key(*parts, tag=tag) == _stdlib(*parts, tag=tag), (parts, tag)
    # a date is no JSON type: the stdlib refuses it, and so does the key
    try:
        changelog_key("t", date(2026, 1, 1))
    except TypeError:
        pass
    else:
        raise AssertionError("a date part was accepted")


def test_sorted_keys_is_deterministic_for_any_mix_of_types() -> None:
    plain = [("b", date(2026, 1, 2)), ("a", date(2026, 1, 3)), ("a", date(2026, 1, 1))]
    assert sorted_keys(plain) == sorted(plain)
    mixed = [("b", None), ("a", "x"), ("a", None), ("c", date(2026, 1, 1))]
    assert sorted_keys(mixed) == sorted(mixed, key=sort_key)
    assert sorted_keys(set(mixed)) == sorted_keys(list(reversed(mixed)))
