"""Evaluation report: a page a person can read, built from a run summary JSON.

Per-athlete verdicts, metrics against the naive baselines, pooled figures (pooled
RMSE vs pooled persistence/mean RMSE for regressions, pooled AUROC/Brier of injury
risk against the warning-sign score) and plots: predicted vs actual and residuals
over time, pooled and per athlete. Written as Markdown and HTML side by side.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from veloready_pipeline.families import FAMILIES
from veloready_pipeline.fsio import atomic_write_text
from veloready_pipeline.tables import cell, counts_markdown, md_text

# Statuses of a model that was trained and gated (every one but gate_failed passed).
TRAINED_STATUSES = ("registered", "not_promoted", "unshipped", "gate_failed")


def _status(row: dict[str, Any]) -> str:
    """A row's status; an unchanged row (a re-run did not retrain it) counts as it was."""
    return str(row.get("previous_status") if row.get("status") == "unchanged"
               else row.get("status"))


def pooled_metrics(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Pooled figures per family from the per-athlete rows of a summary."""
    out: dict[str, dict[str, float]] = {}
    by_fam: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("metrics") and _status(r) in TRAINED_STATUSES:
            by_fam.setdefault(r["family"], []).append(r)
    for fam, rs in by_fam.items():
        fam_out: dict[str, float] = {"athletes": float(len(rs)),
                                     "passed": float(sum(_status(r) != "gate_failed"
                                                         for r in rs))}
        n = np.array([r.get("n_rows", {}).get("test", 0) for r in rs], dtype=float)
        if "rmse" in rs[0]["metrics"] and n.sum() > 0:
            rm = np.array([r["metrics"].get("rmse", np.nan) for r in rs])
            fam_out["pooled_rmse"] = float(np.sqrt(np.nansum(n * rm**2) / n.sum()))
            fam_out["median_rmse"] = float(np.nanmedian(rm))
            ma = np.array([r["metrics"].get("mae", np.nan) for r in rs])
            for key in sorted({k for r in rs for k in r.get("baselines", {})}):
                if key.endswith("_rmse"):
                    b = np.array([r["baselines"].get(key, np.nan) for r in rs])
                    fam_out[f"pooled_{key}"] = float(np.sqrt(np.nansum(n * b**2) / n.sum()))
                    fam_out[f"share_beating_{key}"] = float(np.mean(rm < b))
                elif key.endswith("_mae"):
                    b = np.array([r["baselines"].get(key, np.nan) for r in rs])
                    fam_out[f"share_beating_{key}"] = float(np.mean(ma < b))
            lows = [r["metrics"].get("mae_gain_ci_low") for r in rs]
            if all(x is not None for x in lows):
                # Athletes for whom the test part shows the model helps (CI above 0).
                fam_out["share_mae_gain_ci_above_0"] = float(np.mean(np.array(lows) > 0))
        tests = [r["test"] for r in rs if r.get("test")]
        fam_out |= FAMILIES.get(fam).pooled_figures(tests)
        out[fam] = fam_out
    return out


def _pooled_plot(rows: list[dict[str, Any]], family: str, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tests = [r["test"] for r in rows if r["family"] == family and r.get("test")]
    if not tests:
        return None
    y = np.concatenate([np.asarray(t["y_true"], dtype=float).reshape(len(t["y_true"]), -1)[:, 0]
                        for t in tests])
    p = np.concatenate([np.asarray(t["y_pred"], dtype=float).reshape(len(t["y_pred"]), -1)[:, 0]
                        for t in tests])
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=90)
    a1.scatter(y, p, s=5, alpha=0.5)
    lo, hi = float(min(y.min(), p.min())), float(max(y.max(), p.max()))
    a1.plot([lo, hi], [lo, hi], "k--", lw=1)
    a1.set_xlabel("actual")
    a1.set_ylabel("predicted")
    a1.set_title(f"{family}: pooled test parts", fontsize=9)
    for t in tests[:40]:
        yt = np.asarray(t["y_true"], dtype=float).reshape(len(t["y_true"]), -1)[:, 0]
        pt = np.asarray(t["y_pred"], dtype=float).reshape(len(t["y_pred"]), -1)[:, 0]
        a2.plot(range(len(yt)), pt - yt, lw=0.6, alpha=0.6)
    a2.axhline(0, color="k", lw=1)
    a2.set_xlabel("test day")
    a2.set_ylabel("residual")
    a2.set_title("residuals over time (up to 40 athletes)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _pooled_table(figs: dict[str, float]) -> list[str]:
    out = ["| figure | value |", "|---|---|"]
    for k, v in figs.items():
        nd = 0 if k in ("athletes", "passed") or k.endswith(("_onsets", "_days")) else 3
        out.append(f"| {k.replace('_', ' ')} | {cell(v, nd)} |")
    return out


def report_sections(summary: dict[str, Any], pooled: dict[str, dict[str, float]],
                    plots: dict[str, str] | None, per_athlete_limit: int | None = None,
                    ) -> list[str]:
    """The report as Markdown lines; ``plots`` None leaves the images out (Prefect)."""
    rows: list[dict[str, Any]] = summary["rows"]
    md: list[str] = [f"# VeloReady evaluation report — run {summary.get('flow_run_id', '?')}",
                     "", f"Data: `{summary.get('data')}` (source `{summary.get('source')}`), "
                     f"as of {summary.get('as_of') or 'latest'}.", ""]
    md.append("## Models by family and status\n")
    md.append(counts_markdown(summary.get("counts", {})))
    md.append("\n## Pooled figures\n")
    md.append("Regressions: RMSE pooled over every athlete's test part against the pooled "
              "naive baselines. Injury: an *event* is an injury onset; AUROC and Brier "
              "over every test day (label: an onset within 7 days).\n")
    for fam, figs in pooled.items():
        md.append(f"### {fam}\n")
        md += _pooled_table(figs)
        if plots and fam in plots:
            md.append(f"\n![{fam} pooled]({plots[fam]})\n")
    md.append("\n## Per athlete\n")
    md.append("Model: the population model or the athlete's personal one (picked on "
              "validation). MAE gain: the mean baseline's test MAE minus the model's, with a "
              "95 % paired bootstrap interval (above 0: the model helps this athlete).\n")
    md.append("| athlete | family | status | model | rmse | mae | r² | auroc | brier "
              "| baselines | MAE gain (95 % CI) | reason |")
    md.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    shown = rows if per_athlete_limit is None else rows[:per_athlete_limit]
    for r in shown:
        m = r.get("metrics", {}) or {}
        base = ", ".join(f"{k.replace('_', ' ')} {cell(v, 2)}"
                         for k, v in (r.get("baselines") or {}).items()) or "—"
        gain = (f"{cell(m.get('mae_gain'), 2)} ({cell(m.get('mae_gain_ci_low'), 2)} to "
                f"{cell(m.get('mae_gain_ci_high'), 2)})" if "mae_gain" in m else "—")
        md.append(f"| {r['athlete_id']} | {r['family']} | {r['status'].replace('_', ' ')} "
                  f"| {r.get('model_kind') or '—'} "
                  f"| {cell(m.get('rmse'), 2)} | {cell(m.get('mae'), 2)} "
                  f"| {cell(m.get('r2'), 2)} | {cell(m.get('auroc'), 2)} "
                  f"| {cell(m.get('brier'), 3)} | {md_text(base)} | {gain} "
                  f"| {md_text(str(r.get('reason') or ''))} |")
    if len(shown) < len(rows):
        md.append(f"\n{len(rows) - len(shown)} more athlete models in the full report "
                  "(MLflow artifact `report/report.md`) and the run summary JSON.")
    return md


def build_report(summary: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write report.md and report.html (+ plots) into ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = summary["rows"]
    pooled = pooled_metrics(rows)
    plots: dict[str, str] = {}
    for fam in summary.get("families", []):
        p = _pooled_plot(rows, fam, out_dir / f"pooled-{fam}.png")
        if p is not None:
            plots[fam] = p.name
    md = report_sections(summary, pooled, plots)
    if summary.get("data_notes") is not None:
        from veloready_pipeline.validation import data_notes_markdown

        md.append("\n" + data_notes_markdown(summary.get("data_note_counts", {}),
                                             summary["data_notes"], level=2))
    md.append("\n## Per-athlete plots\n")
    for r in rows:
        art = r.get("artifacts") or {}
        png = art.get("residual_plot")
        if png and Path(png).exists():
            target = out_dir / "plots" / Path(png).name
            target.parent.mkdir(exist_ok=True)
            target.write_bytes(Path(png).read_bytes())
            md.append(f"**{r['athlete_id']} / {r['family']}** ({r['status']})\n\n"
                      f"![residuals](plots/{target.name})\n")
    text = "\n".join(md) + "\n"
    md_path = out_dir / "report.md"
    atomic_write_text(md_path, text)
    html_path = out_dir / "report.html"
    atomic_write_text(html_path, _markdown_to_html(text))
    pooled_path = out_dir / "pooled.json"
    atomic_write_text(pooled_path, json.dumps(pooled, indent=2))
    return {"markdown": md_path, "html": html_path, "pooled": pooled_path}


def prefect_report_markdown(summary: dict[str, Any], report_run_url: str | None,
                            per_athlete_limit: int = 300) -> str:
    """The report's content for a Prefect Markdown artifact: the same sections without
    local images (the UI cannot read this machine's files), pointing to the MLflow run
    that holds the full page, its plots and every per-athlete residual plot."""
    where = (f"[MLflow run of this report]({report_run_url})" if report_run_url
             else "the MLflow run tagged kind=evaluation-report")
    md = report_sections(summary, pooled_metrics(summary["rows"]), None, per_athlete_limit)
    md.insert(3, f"Plots and the full page (`report/report.html`): {where}, Artifacts tab.\n")
    return "\n".join(md) + "\n"


def _markdown_to_html(text: str) -> str:
    """A small converter for the subset of Markdown the report uses (no dependency)."""
    out = ["<!doctype html><html><head><meta charset='utf-8'><title>VeloReady report</title>",
           "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
           "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;"
           "padding:2px 6px}</style></head><body>"]
    in_table = False
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip().replace("\\|", "|")
                     for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
            if all(set(c) <= {"-"} for c in cells):
                continue
            if not in_table:
                out.append("<table>")
                in_table = True
                out.append("<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cells) + "</tr>")
            else:
                out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{html.escape(line[level:].strip())}</h{level}>")
        elif line.startswith("!["):
            src = line[line.index("(") + 1 : line.rindex(")")]
            out.append(f"<p><img src='{html.escape(src)}' alt=''></p>")
        elif line.startswith("- "):
            out.append(f"<li>{html.escape(line[2:]).replace('**', '')}</li>")
        elif line.strip():
            out.append(f"<p>{html.escape(line).replace('**', '')}</p>")
    if in_table:
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)
