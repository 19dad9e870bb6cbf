"""Quoted library errors are shortened at a word boundary, never cut mid-word (issue 35)."""

from __future__ import annotations

import pytest

from veil.errors import brief

LONG = "size mismatch for features.0.0.weight: copying a param with shape torch.Size([16, 3, 3, 3]) " * 4


def test_short_text_is_kept_on_one_line() -> None:
    assert brief("a  b\n c") == "a b c"
    assert brief(ValueError("bad   value")) == "bad value"


@pytest.mark.parametrize("limit", [40, 80, 120, 160, 200])
def test_long_text_is_cut_between_words(limit: int) -> None:
    line = " ".join(LONG.split())
    out = brief(LONG, limit)
    assert len(out) <= limit and out.endswith("…")
    kept = out[:-1]
    assert line.startswith(kept)
    assert line[len(kept)] in " ,;:"  # the next character ends a word: nothing was cut in half
