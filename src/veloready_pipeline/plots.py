"""Small diagnostic plots logged with every model run (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from veloready_pipeline.ids import athlete_key
from veloready_pipeline.results import ModelResult


def plot_residuals(result: ModelResult, out_dir: Path) -> Path:
    """Predicted vs actual and residuals over time on the test part; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"residuals-{result.family}-{athlete_key(result.athlete_id)}.png"
    y = np.asarray(result.test_y, dtype=float)
    p = np.asarray(result.test_pred, dtype=float)
    if y.ndim > 1:  # multi-output (zones): plot the first output (FTP)
        y, p = y[:, 0], p[:, 0]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3), dpi=80)
    ax1.scatter(y, p, s=8)
    lo, hi = float(np.nanmin([y.min(), p.min()])), float(np.nanmax([y.max(), p.max()]))
    ax1.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax1.set_xlabel("actual")
    ax1.set_ylabel("predicted")
    ax1.set_title(f"{result.family} {result.athlete_id}", fontsize=9)
    ax2.axhline(0, color="k", lw=1)
    ax2.plot(range(len(y)), p - y, marker=".", lw=0.8)
    ax2.set_xlabel(f"test day (from {result.data_window.get('test_start', '?')})")
    ax2.set_ylabel("residual")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
