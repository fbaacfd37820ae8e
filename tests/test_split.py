import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from veloready_pipeline.split import split_chronological


@given(st.integers(min_value=3, max_value=5000))
def test_split_is_chronological_disjoint_and_complete(n):
    tr, va, te = split_chronological(n)
    assert len(tr) and len(va) and len(te)
    assert tr.max() < va.min() <= va.max() < te.min()
    assert np.array_equal(np.concatenate([tr, va, te]), np.arange(n))


@pytest.mark.parametrize("n,expected", [(100, (70, 15, 15)), (200, (140, 30, 30)), (3, (1, 1, 1))])
def test_split_sizes(n, expected):
    assert tuple(map(len, split_chronological(n))) == expected


@pytest.mark.parametrize("n", [0, 1, 2])
def test_split_rejects_too_few_rows(n):
    with pytest.raises(ValueError, match="at least 3 rows"):
        split_chronological(n)


def test_split_rejects_bad_fractions():
    with pytest.raises(ValueError, match="sum to 1"):
        split_chronological(10, (0.5, 0.2, 0.2))
