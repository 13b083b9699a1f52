"""The declarative spec machinery (outlet/confspec.py) on small specs of its own."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

from outlet.confspec import (
    Bool,
    Duration,
    Int,
    Invalid,
    Key,
    Kind,
    Number,
    Problems,
    Secret,
    SecretStr,
    Section,
    SpecError,
    Str,
    Where,
    describe,
    dump,
    parse,
    parse_duration,
    parse_mapping,
    section,
    setting,
)


class _Upper(Kind[str]):
    """A custom kind reading a sibling: the value in the case the sibling asks for."""

    def parse(self, raw: object, at: Where, default: str) -> str:
        if not isinstance(raw, str):
            raise Invalid(f"must be a string, got {raw!r}")
        return raw.upper() if at.sibling("shout") else raw


@dataclass(frozen=True)
class Inner:
    limit: int = setting(3, Int(1, 10), doc="How many.")
    password: Secret = setting(Secret(), SecretStr(), doc="Never shown.")


@dataclass(frozen=True)
class Outer:
    name: str = setting("", _Upper(), required=True, doc="The name.")
    shout: bool = setting(False, Bool(), doc="Upper-case the name.")
    wait_time: float = setting(1.0, Duration(positive=True), yaml="timing.wait", doc="Wait.")
    max_wait: float = setting(2.0, Duration(at_least="wait_time"), yaml="timing.max")
    inner: Inner = section(Inner, doc="Nested.")

    __hints__: ClassVar[dict[str, str]] = {"limit": "limit goes under inner"}
    __inputs__: ClassVar[dict[str, Key]] = {"quiet": Key(Bool(), False, doc="Opposite of shout.")}

    @classmethod
    def __check__(cls, s: Section) -> None:
        quiet = s.input("quiet")
        if quiet is not None:
            if s.given("shout") and quiet == s["shout"]:
                s.report("quiet", "contradicts shout")
            s["shout"] = not quiet


@dataclass(frozen=True)
class Snake:
    __key_style__ = "snake"
    batch_size: int = setting(10, Int(1))


def problems_of(cls: type[Any], data: object) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse(cls, data)
    return info.value.errors


def test_parse_derives_keys_paths_defaults_and_siblings() -> None:
    v = parse(Outer, {"name": "ab", "shout": True, "timing": {"wait": "2s"},
                      "inner": {"limit": "4", "password": "pw"}})
    assert v.name == "AB"  # the kind read its sibling, parsed on demand
    assert (v.wait_time, v.max_wait, v.inner.limit) == (2.0, 2.0, 4)
    assert v.inner.password.reveal() == "pw"
    assert parse(Outer, {"name": "x", "quiet": False}).shout is True  # an input key


def test_problems_are_collected_with_paths_and_hints() -> None:
    errors = problems_of(Outer, {"shout": "loud", "timing": {"wait": "1m", "max": "1s",
                                                           "extra": 1},
                                 "limit": 2, "inner": {"limit": 11, "passwrd": "x"},
                                 "quiet": True})
    assert "name: is required" in errors
    assert "shout: must be true or false, got 'loud'" in errors
    assert "timing.max: must be >= timing.wait (1m), got 1s" in errors
    assert "timing.extra: unknown key (allowed: wait, max)" in errors
    assert "limit: unknown key (limit goes under inner)" in errors
    assert "inner.limit: must be an integer between 1 and 10, got 11" in errors
    assert "inner.passwrd: unknown key (did you mean 'password'?)" in errors
    assert len(errors) == 7, errors
    assert problems_of(Snake, {"batch-size": 1}) == [
        "batch-size: unknown key (did you mean 'batch_size'? keys are snake_case)"]


def test_problems_object_and_defaults_instance() -> None:
    probs = Problems()
    v = parse(Outer, {"name": "x", "inner": {"limit": 0}}, probs, path="top",
              defaults=Outer(name="dflt", inner=Inner(limit=5)))
    assert probs.errors == ["top.inner.limit: must be an integer between 1 and 10, got 0"]
    assert v.inner.limit == 5 and v.shout is False
    assert parse(Outer, {"name": "n"}, keys=("name",)).wait_time == 1.0
    assert parse(Outer, {"name": "n", "shout": True}).name == "N"


def test_dump_round_trips_and_redacts() -> None:
    v = parse(Outer, {"name": "n", "timing": {"wait": 90, "max": "2m"},
                      "inner": {"password": "pw"}})
    d = dump(v)
    assert d == {"name": "n", "shout": False, "timing": {"wait": "1m30s", "max": "2m"},
                 "inner": {"limit": 3, "password": "******"}}
    assert dump(parse(Outer, d)) == d


def test_describe_lists_every_key() -> None:
    rows = {r.path: r for r in describe(Outer)}
    assert list(rows) == ["name", "shout", "timing.wait", "timing.max", "inner.limit",
                          "inner.password", "quiet"]
    assert rows["name"].default == "required"
    assert rows["timing.wait"].type_text == "duration > 0" and rows["timing.wait"].default == "`1s`"
    assert rows["inner.limit"].type_text == "int 1..10"


def test_parse_mapping_and_custom_problem_text() -> None:
    probs = Problems()
    spec = {"rate": Key(Number(lo=0), required="required by action set_rate"),
            "for": Key(Duration(problem="bad duration {got}"))}
    out = parse_mapping(spec, {"for": "soon", "colour": 1}, Where("timeline[0]", probs))
    assert out == {}
    assert probs.errors == [
        "timeline[0].colour: unknown key (allowed: rate, for)",
        "timeline[0].rate: required by action set_rate",
        "timeline[0].for: bad duration 'soon'",
    ]


def test_one_duration_grammar() -> None:
    assert parse_duration("1h30m") == 5400 and parse_duration(" 250us ") == pytest.approx(25e-5)
    for bad in ("1h 3m", "-1s", -1, "10 parsecs", "inf", True):
        with pytest.raises(ValueError, match="bad duration"):
            parse_duration(bad)
    with pytest.raises(SpecError):
        parse(Outer, {"name": "n", "timing": {"wait": "0s"}})
    assert Str(choices=("a", "b")).type_doc == "`a`, `b`"
