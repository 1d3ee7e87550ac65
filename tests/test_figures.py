"""Shared figure helpers: the probability formatter used in panel titles and captions."""

from __future__ import annotations

import pytest

from explain.figures import format_prob


@pytest.mark.parametrize(("p", "text"), [
    (0.00116, "0.0012"),  # the bug: the cam panel said "p 0.00"
    (0.5678, "0.57"),
    (1.0, "1.00"),
    (0.01, "0.01"),  # two decimals from 0.01 up
    (0.0099, "0.0099"),  # two significant digits below
    (0.005, "0.0050"),  # trailing zero kept: still two significant digits
    (0.0001, "0.00010"),
    (0.00009, "<1e-4"),
    (0.0, "<1e-4"),  # an underflowed softmax
    (float("nan"), "nan"),
])
def test_format_prob_known_values(p: float, text: str) -> None:
    assert format_prob(p) == text


def test_format_prob_never_prints_zero_for_a_positive_probability() -> None:
    values = [10.0 ** -k * m for k in range(1, 5) for m in (1.0, 1.16, 4.99, 9.5)]
    for p in values:
        text = format_prob(p)
        assert text.startswith("<") or float(text) == pytest.approx(p, rel=0.06, abs=0.005)
        assert text not in ("0.00", "0")
