import pytest
from pydantic import ValidationError

from veloready_pipeline.config import load_settings


def test_defaults_are_the_design_card_gates():
    s = load_settings()
    g = s.gates["recovery"]
    assert (g.rmse_max, g.mae_max, g.r2_min) == (8.0, 6.0, 0.7)
    assert s.min_history_days == 90
    assert s.briefs.model == "gpt-4o-mini" and s.briefs.temperature == 0.7
    assert s.briefs.max_tokens == 300


def test_file_then_env_then_overrides(tmp_path, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("seed: 3\ntuning:\n  n_trials: 5\n  sampler: grid\n")
    assert load_settings(cfg).tuning.n_trials == 5
    monkeypatch.setenv("VELOREADY_TUNING__N_TRIALS", "9")
    s = load_settings(cfg)
    assert (s.seed, s.tuning.n_trials, s.tuning.sampler) == (3, 9, "grid")
    assert load_settings(cfg, seed=11).seed == 11


@pytest.mark.parametrize(
    "override,field",
    [({"min_history_days": 2}, "min_history_days"),
     ({"tuning": {"n_trials": 0}}, "n_trials"),
     ({"families": ["recovery", "speed"]}, "families"),
     ({"briefs": {"temperature": 5}}, "temperature"),
     ({"nonsense": 1}, "nonsense")],
)
def test_bad_values_fail_naming_the_field(override, field):
    with pytest.raises(ValidationError, match=field):
        load_settings(**override)


def test_paths_default_under_home(veloready_home):
    s = load_settings()
    assert s.mlflow_tracking_uri() == f"sqlite:///{veloready_home / 'mlflow' / 'mlflow.db'}"
    assert s.resolve(s.paths.ota_dir) == veloready_home / "data" / "ota"
    assert s.brief_store().endswith(str(veloready_home / "data" / "briefs.db"))
