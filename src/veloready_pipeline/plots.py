"""The residual plot logged with every model run: a hand-written SVG (no matplotlib)."""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from veloready_pipeline.families import FAMILIES
from veloready_pipeline.ids import athlete_key
from veloready_pipeline.results import ModelResult

if TYPE_CHECKING:
    from veloready_pipeline.families.base import ModelFamily


# ------------------------------------------------------------------ SVG (every model run)

_W, _H = 340.0, 250.0  # one panel
_L, _R, _T, _B = 52.0, 14.0, 46.0, 42.0  # margins: left axis labels, title, bottom axis


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]."""
    span = hi - lo
    if span <= 0 or not np.isfinite(span):
        return [lo]
    raw = span / max(n - 1, 1)
    mag = 10 ** np.floor(np.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    first = np.ceil(lo / step) * step
    return [float(v) for v in np.arange(first, hi + step * 1e-9, step)]


def _fmt_tick(v: float, step: float | None = None) -> str:
    """A tick label with as many decimals as the tick spacing needs (no "-0")."""
    v = 0.0 if abs(v) < 1e-9 else v
    if step is None or step <= 0 or not np.isfinite(step):
        return f"{v:.0f}" if abs(v) >= 10 or float(v).is_integer() else f"{v:.1f}"
    decimals = 0
    while decimals < 6 and abs(round(step * 10**decimals) - step * 10**decimals) > 1e-6:
        decimals += 1
    return f"{v:.{decimals}f}"


def _step(ticks: list[float]) -> float | None:
    return ticks[1] - ticks[0] if len(ticks) > 1 else None


class _Panel:
    """One plot area at x-offset ``ox`` with linear scales and drawn axes."""

    def __init__(self, ox: float, xlim: tuple[float, float], ylim: tuple[float, float]):
        self.ox = ox
        pad = lambda lo, hi: (lo - 1.0, hi + 1.0) if hi <= lo else (  # noqa: E731
            lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
        self.x0, self.x1 = pad(*xlim)
        self.y0, self.y1 = pad(*ylim)

    def sx(self, v: float) -> float:
        return self.ox + _L + (v - self.x0) / (self.x1 - self.x0) * (_W - _L - _R)

    def sy(self, v: float) -> float:
        return _H - _B - (v - self.y0) / (self.y1 - self.y0) * (_H - _T - _B)

    def axes(self, title: str, xlabel: str, ylabel: str,
             xticks: list[tuple[float, str]] | None = None) -> list[str]:
        left, right, top, bottom = self.ox + _L, self.ox + _W - _R, _T, _H - _B
        out = [f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" '
               'fill="none" stroke="#444"/>',
               f'<text x="{left}" y="{_T - 26}" font-weight="bold">{escape(title)}</text>',
               f'<text x="{(left + right) / 2:.1f}" y="{_H - 6}" text-anchor="middle">'
               f'{escape(xlabel)}</text>',
               f'<text transform="translate({self.ox + 12},{(top + bottom) / 2:.1f}) '
               f'rotate(-90)" text-anchor="middle">{escape(ylabel)}</text>']
        yticks = _ticks(self.y0, self.y1)
        for v in yticks:
            y = self.sy(v)
            out.append(f'<line x1="{left - 4}" y1="{y:.1f}" x2="{left}" y2="{y:.1f}" '
                       'stroke="#444"/>')
            out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" '
                       'stroke="#eee"/>')
            out.append(f'<text x="{left - 6}" y="{y + 3:.1f}" text-anchor="end">'
                       f'{_fmt_tick(v, _step(yticks))}</text>')
        auto = _ticks(self.x0, self.x1)
        for v, label in xticks if xticks is not None else [
                (t, _fmt_tick(t, _step(auto))) for t in auto]:
            x = self.sx(v)
            out.append(f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 4}" '
                       'stroke="#444"/>')
            out.append(f'<text x="{x:.1f}" y="{bottom + 15}" text-anchor="middle">'
                       f'{escape(label)}</text>')
        return out


def _date_ticks(dates: list[str]) -> list[tuple[float, str]]:
    n = len(dates)
    picks = sorted({0, n - 1} | ({n // 2} if n > 4 else set()))
    return [(float(i), dates[i][5:10] if len(dates[i]) >= 10 else dates[i]) for i in picks]


def model_svg(result: ModelResult, out_dir: Path) -> Path:
    """Two panels with axes, ticks and labels for one model's untouched test part.

    Left: predicted against measured (the dashed diagonal is a perfect model).
    Right, recovery: the test days' actual and predicted scores by date. Zones (scored
    only on 1-2 measured FTP tests): each test's measured FTP, the model's FTP and
    "FTP stays at the last test" (the baseline it must beat) at that date. Injury: the
    predicted risk by day with the label days (an onset within 7 days) shaded.
    Hand-written SVG (~1 ms; matplotlib costs ~0.3 s a model); the MLflow UI shows it.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"residuals-{result.family}-{athlete_key(result.athlete_id)}.svg"
    fam = result.family
    family = FAMILIES.get(fam)
    y, p, dates, base = _test_series(result)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * _W:.0f}" '
             f'height="{_H:.0f}" font-family="sans-serif" font-size="10">',
             f'<rect width="{2 * _W:.0f}" height="{_H:.0f}" fill="white"/>']
    ok = np.isfinite(y) & np.isfinite(p)
    if not ok.any():
        parts.append(f'<text x="20" y="40">{escape(fam)} {escape(result.athlete_id)}: no '
                     'test predictions</text></svg>')
        path.write_text("\n".join(parts), encoding="utf-8")
        return path
    who = f"{fam} {result.athlete_id}"
    if family.plot_style == "risk":
        parts += _risk_panels(family, who, y, p, dates)
    else:
        parts += _score_panels(family, who, _Series(y, p, dates, base), ok)
    parts.append("</svg>")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


class _Series(NamedTuple):
    """One model's test part: measured, predicted, dates and the baseline (or None)."""

    y: np.ndarray
    p: np.ndarray
    dates: list[str]
    base: np.ndarray | None


def _test_series(result: ModelResult) -> _Series:
    """The test part as float arrays (zones: the first output, FTP) with its dates."""
    y = np.asarray(result.test_y if result.test_y is not None else [], dtype=float)
    p = np.asarray(result.test_pred if result.test_pred is not None else [], dtype=float)
    if y.ndim > 1:  # multi-output (zones): the first output (FTP)
        y, p = y[:, 0], p[:, 0]
    dates = [str(d)[:10] for d in result.test_dates] or [str(i) for i in range(len(y))]
    base = result.extra.get("baseline_score")
    base = np.asarray(base, dtype=float).reshape(len(y), -1)[:, 0] if base is not None and \
        len(np.asarray(base).reshape(-1)) >= len(y) else None
    return _Series(y, p, dates, base)


def _risk_panels(family: ModelFamily, who: str, y: np.ndarray, p: np.ndarray,
                 dates: list[str]) -> list[str]:
    """Left: predicted risk by test day, label days shaded. Right: risk against label."""
    unit = family.plot_unit
    parts: list[str] = []
    left = _Panel(0, (0, max(len(y) - 1, 1)), (0, 100))
    parts += left.axes(f"{who}: risk on {len(y)} test days", "test day (MM-DD)",
                       unit, _date_ticks(dates))
    for i in np.flatnonzero(y > 0.5):
        x = left.sx(float(i))
        parts.append(f'<rect x="{x - 2:.1f}" y="{_T}" width="4" height="{_H - _T - _B}" '
                     'fill="#f4b6b6"/>')
    pts = " ".join(f"{left.sx(float(i)):.1f},{left.sy(float(v)):.1f}"
                   for i, v in enumerate(p) if np.isfinite(v))
    parts.append(f'<polyline points="{pts}" fill="none" stroke="steelblue"/>')
    parts.append(f'<text x="{_L}" y="{_T - 9}" fill="#b33">shaded: label days '
                 f'({int((y > 0.5).sum())})</text>')
    right = _Panel(_W, (0, 100), (0, 1))
    order = np.argsort(p)
    parts += right.axes(family.plot_series_title, unit, "label (1 = onset within 7 d)")
    parts += [f'<circle cx="{right.sx(float(p[i])):.1f}" cy="{right.sy(float(y[i])):.1f}" '
              'r="2.5" fill="steelblue" fill-opacity="0.5"/>' for i in order]
    return parts


def _score_panels(family: ModelFamily, who: str, s: _Series, ok: np.ndarray) -> list[str]:
    """Left: predicted against measured with the diagonal. Right: the series by date."""
    unit, tests = family.plot_unit, family.plot_style == "tests"
    parts: list[str] = []
    yy, pp = s.y[ok], s.p[ok]
    lo, hi = float(min(yy.min(), pp.min())), float(max(yy.max(), pp.max()))
    left = _Panel(0, (lo, hi), (lo, hi))
    what = (f"{len(yy)} measured test{'s' if len(yy) > 1 else ''}" if tests
            else f"{len(yy)} test days")
    parts += left.axes(f"{who}: predicted vs measured ({what})",
                       f"measured {unit}", f"predicted {unit}")
    parts.append(f'<line x1="{left.sx(left.x0):.1f}" y1="{left.sy(left.x0):.1f}" '
                 f'x2="{left.sx(left.x1):.1f}" y2="{left.sy(left.x1):.1f}" stroke="#888" '
                 'stroke-dasharray="4"/>')
    parts += [f'<circle cx="{left.sx(a):.1f}" cy="{left.sy(b):.1f}" r="3" '
              'fill="steelblue"/>' for a, b in zip(yy, pp, strict=True)]
    return parts + _series_panel(family, s)


def _series_panel(family: ModelFamily, s: _Series) -> list[str]:
    """The right panel: measured, predicted (and baseline) by test date with a legend.

    Sparse (zones' measured tests, or under 5 days): one marker per test, joined by a
    grey line; otherwise two polylines.
    """
    y, p, dates, base = s
    unit, tests = family.plot_unit, family.plot_style == "tests"
    parts: list[str] = []
    series = [y, p] + ([base] if base is not None else [])
    vals = np.concatenate([v[np.isfinite(v)] for v in series])
    sparse = tests or len(y) < 5
    xlim = (-0.5, len(y) - 0.5) if sparse else (0, max(len(y) - 1, 1))
    right = _Panel(_W, xlim, (float(vals.min()), float(vals.max())))
    ticks = ([(float(i), d[5:10]) for i, d in enumerate(dates)] if sparse
             else _date_ticks(dates))
    parts += right.axes(family.plot_series_title, "test date (MM-DD)", unit, ticks)
    if sparse:
        parts += _test_markers(right, y, p, base)
    else:
        for v, colour in ((y, "#333"), (p, "steelblue")):
            pts = " ".join(f"{right.sx(float(i)):.1f},{right.sy(float(w)):.1f}"
                           for i, w in enumerate(v) if np.isfinite(w))
            parts.append(f'<polyline points="{pts}" fill="none" stroke="{colour}"/>')
    legend = [("#333", "measured" if tests else "actual"),
              ("steelblue", "model")] + (
        [("#999", "last test (baseline)")] if sparse and base is not None else [])
    for k, (colour, label) in enumerate(legend):
        lx = _W + _L + 4 + 78 * k
        parts.append(f'<circle cx="{lx}" cy="{_T - 12}" r="4" fill="{colour}"/>'
                     f'<text x="{lx + 7}" y="{_T - 9}">{label}</text>')
    return parts


def _test_markers(right: _Panel, y: np.ndarray, p: np.ndarray,
                  base: np.ndarray | None) -> list[str]:
    """One test a column: measured-to-model line, baseline square, the two markers."""
    parts: list[str] = []
    for i in range(len(y)):
        x = right.sx(float(i))
        if np.isfinite(y[i]) and np.isfinite(p[i]):
            parts.append(f'<line x1="{x:.1f}" y1="{right.sy(y[i]):.1f}" x2="{x:.1f}" '
                         f'y2="{right.sy(p[i]):.1f}" stroke="#bbb"/>')
        if base is not None and np.isfinite(base[i]):
            parts.append(f'<rect x="{x - 3:.1f}" y="{right.sy(base[i]) - 3:.1f}" '
                         'width="6" height="6" fill="#999"/>')
        parts.append(f'<circle cx="{x:.1f}" cy="{right.sy(y[i]):.1f}" r="4" '
                     'fill="#333"/>')
        parts.append(f'<circle cx="{x:.1f}" cy="{right.sy(p[i]):.1f}" r="4" '
                     'fill="steelblue"/>')
    return parts
