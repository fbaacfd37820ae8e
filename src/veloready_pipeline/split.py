"""Chronological train/validation/test split.

Time series are split in time order, never randomly: a random split would let the
model see tomorrow while being scored on yesterday. Each athlete is split on their own
rows, oldest first: the first 70 % train, the next 15 % validate (tuning), the last
15 % test (gates only).
"""

from __future__ import annotations

import numpy as np

DEFAULT_FRACTIONS: tuple[float, float, float] = (0.70, 0.15, 0.15)


def split_chronological(
    n_rows: int, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index arrays (train, validation, test) for ``n_rows`` rows sorted oldest first.

    Every part gets at least one row when ``n_rows >= 3``; the parts are contiguous,
    disjoint, cover every row and keep time order (max train < min val < min test).

    Raises:
        ValueError: if fewer than 3 rows or fractions do not sum to 1.
    """
    if n_rows < 3:
        raise ValueError(f"need at least 3 rows for a 3-way split, got {n_rows}")
    if any(f <= 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"split fractions must be positive and sum to 1, got {fractions}")
    n_train = max(1, int(round(n_rows * fractions[0])))
    n_val = max(1, int(round(n_rows * fractions[1])))
    n_train = min(n_train, n_rows - 2)
    n_val = min(n_val, n_rows - n_train - 1)
    idx = np.arange(n_rows)
    return idx[:n_train], idx[n_train : n_train + n_val], idx[n_train + n_val :]
