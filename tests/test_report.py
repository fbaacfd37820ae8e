"""The evaluation report: pooled figures, its sections, the files it writes, the Prefect
variant and the small Markdown-to-HTML converter.

Every expected figure is worked out by hand from the rows below (no run's output).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from veloready_pipeline.families.injury import rank_auroc as auroc
from veloready_pipeline.report import (
    _markdown_to_html,
    build_report,
    pooled_metrics,
    prefect_report_markdown,
    report_sections,
)


def _reg(aid: str, rmse: float, mae: float, n: int, status: str = "registered",
         **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "athlete_id": aid, "family": "recovery", "status": status, "model_kind": "personal",
        "metrics": {"rmse": rmse, "mae": mae, "r2": 0.5, "mae_gain": 0.25,
                    "mae_gain_ci_low": 0.1, "mae_gain_ci_high": 0.4},
        "baselines": {"persistence_rmse": 1.5, "mean_mae": 1.2},
        "n_rows": {"test": n}, "reason": "passed every check",
        "test": {"y_true": [60.0, 62.0, 64.0], "y_pred": [61.0, 61.5, 65.0]},
    }
    row.update(extra)
    return row


def _injury(aid: str, y: list[float], p: list[float], score: list[float] | None,
            status: str = "registered") -> dict[str, Any]:
    return {"athlete_id": aid, "family": "injury", "status": status, "model_kind": "pooled",
            "metrics": {"auroc": 0.75, "brier": 0.2}, "baselines": {}, "n_rows": {"test": len(y)},
            "reason": "", "test": {"y_true": y, "y_pred": p, "baseline_score": score}}


def _rows() -> list[dict[str, Any]]:
    return [
        _reg("a1", rmse=1.0, mae=0.8, n=10),
        _reg("a2", rmse=2.0, mae=1.6, n=30, status="gate_failed", reason="rmse 2.00 > 1.50"),
        # a re-run that did not retrain a2's neighbour counts as it was (registered)
        _reg("a3", rmse=3.0, mae=2.0, n=0, status="unchanged", previous_status="registered"),
        # neither trained nor gated: left out of every pooled figure
        _reg("a4", rmse=99.0, mae=99.0, n=1000, status="skipped"),
        {"athlete_id": "a5", "family": "recovery", "status": "registered", "metrics": {},
         "n_rows": {"test": 1000}},
        _injury("i1", [0, 1], [10, 30], [0.9, 0.1]),
        _injury("i2", [0, 1], [20, 40], [0.8, 0.2]),
    ]


# ------------------------------------------------------------------------ pooled figures

def test_auroc_counts_ties_as_half_and_needs_both_classes() -> None:
    assert auroc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert auroc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert auroc([0, 1], [5, 5]) == 0.5
    assert auroc([0, 1, 0, 1], [1, 2, 2, 3]) == 0.875  # one tied pair of 4: 3.5 / 4
    assert math.isnan(auroc([1, 1], [0.2, 0.3]))
    assert math.isnan(auroc([], []))


def test_regression_pooled_figures_weight_athletes_by_their_test_days() -> None:
    rec = pooled_metrics(_rows())["recovery"]
    # a1, a2 and a3 (unchanged, was registered); a4 skipped, a5 without metrics
    assert rec["athletes"] == 3.0 and rec["passed"] == 2.0
    # sqrt((10 * 1^2 + 30 * 2^2 + 0 * 3^2) / 40): a3 has no test days
    assert rec["pooled_rmse"] == pytest.approx(math.sqrt(130 / 40))
    assert rec["median_rmse"] == pytest.approx(2.0)
    assert rec["pooled_persistence_rmse"] == pytest.approx(1.5)
    assert rec["share_beating_persistence_rmse"] == pytest.approx(1 / 3)  # only a1 < 1.5
    assert rec["share_beating_mean_mae"] == pytest.approx(1 / 3)  # only a1's 0.8 < 1.2
    assert rec["share_mae_gain_ci_above_0"] == 1.0
    assert "pooled_mean_mae" not in rec  # MAE baselines give shares, not pooled values


def test_the_ci_share_needs_every_athlete_to_have_an_interval() -> None:
    rows = [_reg("a1", 1.0, 0.8, 10), _reg("a2", 2.0, 1.6, 30)]
    rows[1]["metrics"]["mae_gain_ci_low"] = -0.3
    assert pooled_metrics(rows)["recovery"]["share_mae_gain_ci_above_0"] == 0.5
    del rows[1]["metrics"]["mae_gain_ci_low"]
    assert "share_mae_gain_ci_above_0" not in pooled_metrics(rows)["recovery"]


def test_no_test_days_means_no_pooled_rmse() -> None:
    rec = pooled_metrics([_reg("a1", 1.0, 0.8, 0)])["recovery"]
    assert rec == {"athletes": 1.0, "passed": 1.0}


def test_injury_pooled_figures_over_every_test_day() -> None:
    inj = pooled_metrics(_rows())["injury"]
    # y = [0, 1, 0, 1], p = [10, 30, 20, 40] % -> probabilities .1 .3 .2 .4
    assert inj["pooled_auroc"] == 1.0
    assert inj["pooled_brier"] == pytest.approx((0.01 + 0.49 + 0.04 + 0.36) / 4)
    assert inj["pooled_base_rate_brier"] == pytest.approx(0.25)
    assert inj["pooled_onsets"] == 2.0 and inj["pooled_positive_label_days"] == 2.0
    # the warning-sign score ranks every positive day below every negative one
    assert inj["pooled_warning_score_auroc"] == 0.0


def test_injury_probabilities_already_in_0_1_are_not_rescaled() -> None:
    inj = pooled_metrics([_injury("i1", [0, 1, 1, 0], [0.5, 1.0, 1.0, 0.0], None)])["injury"]
    assert inj["pooled_brier"] == pytest.approx(0.25 / 4)
    assert inj["pooled_onsets"] == 1.0 and inj["pooled_positive_label_days"] == 2.0
    assert "pooled_warning_score_auroc" not in inj  # one athlete without a score


# ------------------------------------------------------------------------- the sections

def _summary(rows: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    s: dict[str, Any] = {"flow_run_id": "run-42", "data": "/data/x.csv", "source": "generic_csv",
                         "as_of": "2026-03-01", "families": ["recovery", "injury"],
                         "counts": {"recovery": {"registered": 3, "gate_failed": 1}},
                         "rows": _rows() if rows is None else rows}
    s.update(extra)
    return s


def test_sections_name_the_run_the_data_and_every_athlete() -> None:
    summary = _summary()
    md = report_sections(summary, pooled_metrics(summary["rows"]), {"recovery": "p.png"})
    text = "\n".join(md)
    assert md[0] == "# VeloReady evaluation report — run run-42"
    assert "Data: `/data/x.csv` (source `generic_csv`), as of 2026-03-01." in text
    assert "| recovery | 3 | 1 | 4 |" in text  # counts table: registered, gate failed, total
    assert "### recovery" in text and "### injury" in text
    assert "| pooled rmse | 1.803 |" in text and "| athletes | 3 |" in text
    assert "| pooled onsets | 2 |" in text
    assert "![recovery pooled](p.png)" in text and "injury pooled" not in text
    a2 = next(line for line in md if line.startswith("| a2 |"))
    assert a2 == ("| a2 | recovery | gate failed | personal | 2.00 | 1.60 | 0.50 | — | — "
                  "| persistence rmse 1.50, mean mae 1.20 | 0.25 (0.10 to 0.40) "
                  "| rmse 2.00 > 1.50 |")
    a5 = next(line for line in md if line.startswith("| a5 |"))
    assert a5 == "| a5 | recovery | registered | — | — | — | — | — | — | — | — | — |"
    assert sum(bool(re.match(r"\| a\d \| recovery \|", line)) for line in md) == 5


def test_sections_without_plots_or_date_and_a_limited_athlete_table() -> None:
    summary = _summary(as_of=None)
    md = report_sections(summary, pooled_metrics(summary["rows"]), None, per_athlete_limit=2)
    text = "\n".join(md)
    assert "as of latest." in text and "![" not in text
    assert [line.split(" |")[0] for line in md if re.match(r"\| [ai]\d ", line)] == ["| a1",
                                                                                    "| a2"]
    assert "5 more athlete models in the full report" in text


def test_a_reason_with_pipes_and_newlines_stays_in_its_cell() -> None:
    rows = [_reg("a1", 1.0, 0.8, 10, reason="a | b\nc")]
    md = report_sections(_summary(rows), pooled_metrics(rows), None)
    line = next(line for line in md if line.startswith("| a1 |"))
    assert line.endswith("| a \\| b c |")


# --------------------------------------------------------------------------- the files

def test_build_report_writes_markdown_html_pooled_json_and_plots(tmp_path: Path) -> None:
    residuals = tmp_path / "run" / "residuals-a1.png"
    residuals.parent.mkdir()
    residuals.write_bytes(b"\x89PNG fake residual plot")
    rows = _rows()
    rows[0]["artifacts"] = {"residual_plot": str(residuals)}
    rows[1]["artifacts"] = {"residual_plot": str(tmp_path / "gone.png")}  # missing: skipped
    rows[1]["reason"] = "<script>alert(1)</script> & more"
    out = build_report(_summary(rows), tmp_path / "report")

    assert set(out) == {"markdown", "html", "pooled"}
    assert out["markdown"] == tmp_path / "report" / "report.md"
    assert json.loads(out["pooled"].read_text()) == pooled_metrics(rows)
    text = out["markdown"].read_text()
    assert text.endswith("\n") and "## Per-athlete plots" in text
    assert "![recovery pooled](pooled-recovery.png)" in text
    assert "![injury pooled](pooled-injury.png)" in text
    for fam in ("recovery", "injury"):
        assert (tmp_path / "report" / f"pooled-{fam}.png").read_bytes()[:4] == b"\x89PNG"
    copied = tmp_path / "report" / "plots" / "residuals-a1.png"
    assert copied.read_bytes() == residuals.read_bytes()
    assert "**a1 / recovery** (registered)\n\n![residuals](plots/residuals-a1.png)" in text
    assert "gone.png" not in text and "## Data notes" not in text

    page = out["html"].read_text()
    assert page.startswith("<!doctype html>") and page.endswith("</html>")
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in page
    assert "<h1>VeloReady evaluation report — run run-42</h1>" in page
    assert "<img src='plots/residuals-a1.png' alt=''>" in page
    assert not list((tmp_path / "report").glob(".report*"))  # no temporary file left


def test_a_family_without_test_parts_gets_no_plot(tmp_path: Path) -> None:
    rows = [_reg("a1", 1.0, 0.8, 10, test=None)]
    out = build_report(_summary(rows, families=["recovery"]), tmp_path)
    assert not (tmp_path / "pooled-recovery.png").exists()
    assert "![recovery pooled]" not in out["markdown"].read_text()


def test_prefect_variant_links_the_mlflow_run_and_has_no_local_images() -> None:
    summary = _summary()
    md = prefect_report_markdown(summary, "http://mlflow.test/#/experiments/1/runs/abc",
                                 per_athlete_limit=1)
    lines = md.splitlines()
    assert lines[0] == "# VeloReady evaluation report — run run-42"
    assert ("Plots and the full page (`report/report.html`): [MLflow run of this report]"
            "(http://mlflow.test/#/experiments/1/runs/abc), Artifacts tab.") in lines
    assert "![" not in md and "| a1 |" in md and "| a2 |" not in md
    assert "6 more athlete models" in md
    fallback = prefect_report_markdown(summary, None)
    assert "the MLflow run tagged kind=evaluation-report, Artifacts tab." in fallback
    assert "| i2 |" in fallback


# ------------------------------------------------------------------- Markdown -> HTML

def test_markdown_to_html_escapes_and_converts_the_subset_it_knows() -> None:
    page = _markdown_to_html("\n".join([
        "# Title <1>", "### Sub & co", "", "| a | b \\| c |", "|---|---|",
        "| <x> | **y** |", "| 1 | 2 |", "after the table", "- item <i>", "**bold** text",
        "![alt](plots/a'b.png)"]))
    body = page.split("<body>", 1)[1]
    assert body.strip().splitlines() == [
        "<h1>Title &lt;1&gt;</h1>",
        "<h3>Sub &amp; co</h3>",
        "<table>",
        "<tr><th>a</th><th>b | c</th></tr>",
        "<tr><td>&lt;x&gt;</td><td>**y**</td></tr>",
        "<tr><td>1</td><td>2</td></tr>",
        "</table>",
        "<p>after the table</p>",
        "<li>item &lt;i&gt;</li>",
        "<p>bold text</p>",
        "<p><img src='plots/a&#x27;b.png' alt=''></p>",
        "</body></html>",
    ]


def test_a_table_at_the_end_is_closed() -> None:
    page = _markdown_to_html("| a |\n|---|\n| 1 |")
    assert page.endswith("<tr><td>1</td></tr>\n</table>\n</body></html>")
