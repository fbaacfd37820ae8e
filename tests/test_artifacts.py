"""What people read: the gate table, the evaluation report, the plots, the MLflow view."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import numpy as np

from veloready_pipeline.gates import Check
from veloready_pipeline.plots import model_svg
from veloready_pipeline.report import prefect_report_markdown
from veloready_pipeline.results import ModelResult
from veloready_pipeline.tables import counts_markdown, gate_table_markdown

LONG_REASON = ("failed: pooled test events 8 < 10 (misses by 2); pooled auroc undefined "
               "(needs >= 0.750); " + "word " * 60 + "end-of-reason | with a pipe")


def _rows() -> list[dict]:
    return [
        {"athlete_id": "sim-0001", "family": "recovery", "status": "registered",
         "reason": "first passing version: champion", "metrics": {
             "rmse": 4.6, "mae": 3.8, "r2": 0.87, "baseline_rmse": 13.0},
         "baselines": {"mean_rmse": 13.0}, "registry_name": "veloready-recovery-sim-0001",
         "registry_version": "3", "champion": True, "mlflow_run_id": "abcdef0123456789",
         "test": {"y_true": [50.0, 60.0], "y_pred": [52.0, 58.0]}, "n_rows": {"test": 2}},
        {"athlete_id": "sim-0001", "family": "injury", "status": "gate_failed",
         "reason": LONG_REASON, "metrics": {"brier": 0.04, "auroc": math.nan},
         "baselines": {"base_rate_brier": 0.05, "warning_score_auroc": math.nan},
         "registry_version": None, "mlflow_run_id": "fedcba9876543210",
         "test": {"y_true": [0.0, 1.0, 1.0, 0.0, 1.0], "y_pred": [5.0, 60.0, 70.0, 9.0, 50.0],
                  "baseline_score": [0.0, 1.0, 2.0, 0.0, 1.0]}, "n_rows": {"test": 5}},
    ]


def test_gate_table_is_text_with_links_and_full_reasons():
    md = gate_table_markdown(_rows(), mlflow_url="http://mlflow.test:5000", experiment_id="7")
    assert "nan" not in md.replace("nano", "")
    assert "end-of-reason \\| with a pipe" in md  # whole reason, pipe escaped
    assert "[v3 (champion)](http://mlflow.test:5000/#/models/veloready-recovery-sim-0001/" \
           "versions/3)" in md
    assert ("[abcdef01](http://mlflow.test:5000/#/experiments/7/runs/abcdef0123456789"
            "?workflowType=machine_learning)") in md
    assert "| gate failed |" in md
    # every row has the header's number of cells
    widths = {len([c for c in line.replace("\\|", "").split("|")]) for line in md.splitlines()
              if line.startswith("|")}
    assert len(widths) == 1
    counts = counts_markdown({"recovery": {"registered": 3, "gate_failed": 1},
                              "zones": {"gate_failed": 2}})
    assert counts.splitlines()[0] == "| family | registered | gate failed | total |"
    assert "| zones | 0 | 2 | 2 |" in counts and "{" not in counts


def test_prefect_report_has_content_not_a_file_link():
    summary = {"flow_run_id": "r1", "data": "d.parquet", "source": "canonical",
               "families": ["recovery", "injury"],
               "counts": {"recovery": {"registered": 1}, "injury": {"gate_failed": 1}},
               "rows": _rows()}
    md = prefect_report_markdown(summary, "http://mlflow.test:5000/#/experiments/7/runs/x")
    assert "[MLflow run of this report](http://mlflow.test:5000/#/experiments/7/runs/x)" in md
    assert "| pooled onsets | 2 |" in md and "| pooled positive label days | 3 |" in md
    assert "file://" not in md and "nan" not in md.replace("nano", "")
    assert "![" not in md  # no local images the Prefect UI cannot load
    assert LONG_REASON.split("|")[0].strip() in md.replace("\\|", "|")


def test_gate_reason_never_says_nan():
    assert Check("pooled auroc", math.nan, 0.75, ">=", False).describe() == (
        "pooled auroc undefined (needs >= 0.750)")
    assert Check("pooled test events", 8.0, 10.0, ">=", False).describe() == (
        "pooled test events 8 < 10 (misses by 2)")
    text = Check("beats pooled warning_score_auroc", math.nan, math.nan, "beats_higher",
                 False).describe()
    assert "nan" not in text and "not comparable" in text


def _svg_texts(path) -> list[str]:
    root = ET.parse(path).getroot()
    return ["".join(t.itertext()) for t in root.iter("{http://www.w3.org/2000/svg}text")]


def test_model_plots_have_axes_and_show_sparse_zone_tests(tmp_path):
    zones = ModelResult("sim-0002", "zones", "trained",
                        test_y=np.array([[250.0, 1, 2, 3], [262.0, 1, 2, 3]]),
                        test_pred=np.array([[255.0, 1, 2, 3], [259.0, 1, 2, 3]]),
                        test_dates=["2026-05-01", "2026-05-29"],
                        extra={"baseline_score": np.array([248.0, 250.0])})
    texts = _svg_texts(model_svg(zones, tmp_path))
    assert "measured FTP (W)" in texts and "predicted FTP (W)" in texts
    assert "FTP at each measured test" in texts and "last test (baseline)" in texts
    assert "05-01" in texts and "05-29" in texts  # the tests' dates on the x axis
    assert sum(t.replace(".", "").isdigit() for t in texts) >= 6  # tick labels on both axes
    recovery = ModelResult("sim-0001", "recovery", "trained",
                           test_y=np.linspace(40, 80, 20), test_pred=np.linspace(42, 78, 20),
                           test_dates=[f"2026-06-{d:02d}" for d in range(1, 21)])
    texts = _svg_texts(model_svg(recovery, tmp_path))
    assert "measured recovery score (0-100)" in texts and "test date (MM-DD)" in texts
    injury = ModelResult("sim-0003", "injury", "trained", test_y=np.array([0, 0, 1, 1, 0.0]),
                         test_pred=np.array([5, 10, 60, 70, 8.0]),
                         test_dates=[f"2026-06-{d:02d}" for d in range(1, 6)])
    texts = _svg_texts(model_svg(injury, tmp_path))
    assert "risk (%)" in texts and "shaded: label days (2)" in texts


def test_training_experiment_opens_on_training_runs(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from veloready_pipeline.config import load_settings
    from veloready_pipeline.lifecycle.store import EXPERIMENT, configure_mlflow

    monkeypatch.setenv("VELOREADY_HOME", str(tmp_path))
    settings = load_settings()
    configure_mlflow(settings)
    uri = settings.mlflow_tracking_uri()
    exp = MlflowClient(uri).get_experiment_by_name(EXPERIMENT)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    # an experiment made before the tag existed gets it on the next run
    MlflowClient(uri).delete_experiment_tag(exp.experiment_id, "mlflow.experimentKind")
    configure_mlflow(settings)
    exp = MlflowClient(uri).get_experiment_by_name(EXPERIMENT)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
