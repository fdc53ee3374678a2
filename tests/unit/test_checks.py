"""Flag numbers checked into clear usage errors (the project-folder rule is tested for real in test_lifecycle)."""

import pytest

from gpuops.checks import number
from gpuops.errors import UsageError


@pytest.mark.parametrize(
    "value,whole,expected",
    [("2.5", False, 2.5), (30, False, 30.0), ("10", True, 10), (4.0, True, 4), ("1e3", True, 1000)],
)
def test_number_reads_flag_numbers(value, whole, expected):
    got = number("--x", value, whole=whole)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("value,whole", [("abc", False), ("0", False), ("-1", False), ("inf", False),
                                         ("nan", False), (None, False), (True, True), ("2.5", True), ("", True)])
def test_number_rejects_what_is_not_a_number_above_zero(value, whole):
    with pytest.raises(UsageError, match="--x must be a (whole )?number above 0"):
        number("--x", value, whole=whole)


def test_number_keeps_to_its_range():
    assert number("--lines", "0", whole=True, low_ok=True) == 0
    assert number("--port", "65535", whole=True, high=65535) == 65535
    with pytest.raises(UsageError, match="--port must be a whole number above 0 and at most 65535, not '70000'"):
        number("--port", "70000", whole=True, high=65535)
    with pytest.raises(UsageError, match="--lines must be a whole number at least 0"):
        number("--lines", "-1", whole=True, low_ok=True)
