import math
import re
import time

import pytest

import driftgate
from driftgate import ManualClock, Verdict


def test_verdict_is_an_enum_with_stable_codes():
    assert [v.name for v in Verdict] == ["OK", "WARN", "FAIL"]
    assert [v.value for v in Verdict] == [0, 1, 2]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("ok", Verdict.OK), ("OK", Verdict.OK), ("Warn", Verdict.WARN), ("fAiL", Verdict.FAIL)],
)
def test_verdict_strings_parse_in_any_case(text, expected):
    assert driftgate.parse_verdict(text) is expected


@pytest.mark.parametrize("bad", ["okay", "", " ok", 0, 1, None, True, 2.0, b"ok"])
def test_anything_else_is_a_value_error_naming_it(bad):
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        driftgate.parse_verdict(bad)


def test_manual_clock_moves_only_when_told():
    clock = ManualClock(5.0)
    assert clock.now() == clock.wall() == 5.0
    clock.advance(2.5)
    assert clock.now() == 7.5
    clock.set(1.0)
    assert clock.now() == 1.0


def test_manual_clock_rejects_bad_moves_and_keeps_its_time():
    clock = ManualClock()
    with pytest.raises(ValueError, match=r"-3"):
        clock.advance(-3)
    with pytest.raises(ValueError, match="nan"):
        clock.set(math.nan)
    with pytest.raises(ValueError, match="inf"):
        ManualClock(math.inf)
    assert clock.now() == 0.0


def test_system_clock_now_is_monotonic_and_wall_is_unix_time():
    clock = driftgate.SystemClock()
    first = clock.now()
    assert clock.now() >= first
    assert abs(clock.wall() - time.time()) < 5
