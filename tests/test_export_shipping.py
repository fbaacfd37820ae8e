"""Which Core ML variant of a network ships (`families.nets_common.choose_shipped_variant`)."""

from __future__ import annotations

import pytest

from veloready_pipeline.families.nets_common import choose_shipped_variant


def variant(passed: bool, size: int, float_size: int = 30_000) -> dict:
    return {"passed": passed, "size_bytes": size, "size_ratio": size / float_size,
            "verdict": "pass" if passed else "rmse 9.1 >= 8"}


@pytest.mark.parametrize(
    ("report", "shipped"),
    [
        # the smallest passing quantized variant
        ({"float32": variant(True, 30_000), "linear8": variant(True, 14_000),
          "palette4": variant(True, 11_000)}, "palette4"),
        # palette4 loses the gate: linear8 ships
        ({"float32": variant(True, 30_000), "linear8": variant(True, 14_000),
          "palette4": variant(False, 11_000)}, "linear8"),
        # no quantization configured: float32 alone may ship
        ({"float32": variant(True, 30_000)}, "float32"),
    ],
)
def test_the_smallest_passing_quantized_variant_ships(report: dict, shipped: str) -> None:
    assert choose_shipped_variant(report, 0.5) == shipped


@pytest.mark.parametrize(
    "report",
    [
        # every quantized variant fails: float32 passing is no fallback
        {"float32": variant(True, 30_000), "linear8": variant(False, 14_000),
         "palette4": variant(False, 11_000)},
        # linear8 passes but is more than half the float32 bytes; palette4 fails
        {"float32": variant(True, 30_000), "linear8": variant(True, 15_300),
         "palette4": variant(False, 11_000)},
        # float32 alone and failing
        {"float32": variant(False, 30_000)},
    ],
)
def test_nothing_ships_without_a_passing_small_enough_variant(report: dict) -> None:
    with pytest.raises(RuntimeError, match="no shippable variant") as err:
        choose_shipped_variant(report, 0.5)
    assert "size ratio" in str(err.value)


def test_the_size_limit_is_configurable() -> None:
    report = {"float32": variant(True, 30_000), "linear8": variant(True, 15_300)}
    assert choose_shipped_variant(report, 0.6) == "linear8"
    with pytest.raises(RuntimeError):
        choose_shipped_variant(report, 0.5)
