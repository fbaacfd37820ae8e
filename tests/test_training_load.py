import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from veloready_pipeline.training_load import ATL_DAYS, CTL_DAYS, ewma_load, training_load

tss_lists = st.lists(st.floats(min_value=0, max_value=500, allow_nan=False), min_size=1,
                     max_size=200)


@given(tss_lists)
def test_loads_stay_within_input_range(tss):
    out = training_load(np.array(tss))
    for key in ("ctl", "atl"):
        assert np.all(out[key] >= -1e-9)
        assert np.all(out[key] <= max(tss) + 1e-9)


@given(tss_lists, st.integers(min_value=0, max_value=199), st.floats(min_value=0, max_value=500))
def test_changing_a_day_never_changes_earlier_loads(tss, k, new):
    k = k % len(tss)
    a = training_load(np.array(tss))
    changed = list(tss)
    changed[k] = new
    b = training_load(np.array(changed))
    for key in ("ctl", "atl", "acwr"):
        np.testing.assert_array_equal(a[key][:k], b[key][:k])
    # TSB is yesterday's form: even day k itself is unaffected.
    np.testing.assert_array_equal(a["tsb"][: k + 1], b["tsb"][: k + 1])


def test_constant_load_converges_to_that_load():
    out = training_load(np.full(400, 100.0))
    assert out["ctl"][-1] == pytest.approx(100, rel=1e-3)
    assert out["atl"][-1] == pytest.approx(100, rel=1e-6)
    assert out["tsb"][-1] == pytest.approx(0, abs=0.5)


def test_atl_reacts_faster_than_ctl():
    tss = np.r_[np.zeros(10), np.full(7, 150.0)]
    out = training_load(tss)
    assert out["atl"][-1] > out["ctl"][-1] > 0
    assert out["tsb"][-1] < 0
    assert out["acwr"][-1] > 1.5


def test_missing_tss_counts_as_rest():
    np.testing.assert_allclose(ewma_load(np.array([np.nan, 100.0]), ATL_DAYS),
                               ewma_load(np.array([0.0, 100.0]), ATL_DAYS))
    assert CTL_DAYS == 42 and ATL_DAYS == 7
