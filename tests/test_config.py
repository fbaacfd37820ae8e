import pytest

from veloready_pipeline.config import ConfigError, load_settings


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
    with pytest.raises(ConfigError, match=field):
        load_settings(**override)


def test_paths_default_under_home(veloready_home):
    s = load_settings()
    assert s.mlflow_tracking_uri() == f"sqlite:///{veloready_home / 'mlflow' / 'mlflow.db'}"
    assert s.resolve(s.paths.ota_dir) == veloready_home / "data" / "ota"
    assert s.brief_store().endswith(str(veloready_home / "data" / "briefs.db"))


# --- field-by-field merge (issue 15 part 3) ------------------------------------------

def _gate(s, family):
    return s.gates[family].model_dump()


def test_one_env_threshold_keeps_the_others(monkeypatch):
    monkeypatch.setenv("VELOREADY_GATES__RECOVERY__RMSE_MAX", "7.9")
    g = load_settings().gates
    assert (g["recovery"].rmse_max, g["recovery"].mae_max, g["recovery"].r2_min) == \
        (7.9, 6.0, 0.7)
    assert _gate(load_settings(), "zones")["mae_max"] == 6.0


def test_env_min_events_keeps_the_auroc_check(monkeypatch):
    monkeypatch.setenv("VELOREADY_GATES__INJURY__MIN_EVENTS", "5")
    g = load_settings().gates["injury"]
    assert (g.auroc_min, g.min_events) == (0.75, 5)


def test_yaml_threshold_merges_with_env_and_other_families(tmp_path, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("gates:\n  recovery:\n    r2_min: 0.5\n  zones:\n    rmse_max: 9.0\n")
    monkeypatch.setenv("VELOREADY_GATES__RECOVERY__RMSE_MAX", "7.9")
    s = load_settings(cfg)
    assert (s.gates["recovery"].rmse_max, s.gates["recovery"].mae_max,
            s.gates["recovery"].r2_min) == (7.9, 6.0, 0.5)
    # the env override of recovery did not reset the file's zones threshold
    assert (s.gates["zones"].rmse_max, s.gates["zones"].mae_max) == (9.0, 6.0)
    assert s.gates["injury"].auroc_min == 0.75


def test_null_turns_one_threshold_off(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("gates:\n  recovery:\n    mae_max: null\n")
    g = load_settings(cfg).gates["recovery"]
    assert (g.rmse_max, g.mae_max, g.r2_min) == (8.0, None, 0.7)


def test_search_space_merges_per_family_and_parameter():
    s = load_settings(tuning={"spaces": {"recovery": {"params": {"max_depth": [2, 3]}}}})
    rec = s.tuning.spaces["recovery"].params
    assert rec["max_depth"] == [2, 3] and rec["learning_rate"] == [0.03, 0.3]
    assert len(rec) == 6
    assert s.tuning.spaces["zones"].params["hidden"] == [64, 80, 96]


@pytest.mark.parametrize(
    "override,expected",
    [({"tuning": {"ntrials": 3}},
      "unknown setting tuning.ntrials (argument); did you mean 'n_trials'?"),
     ({"gates": {"recovery": {"rmse_mx": 7.0}}}, "unknown setting gates.recovery.rmse_mx"),
     ({"gates": {"recovry": {"rmse_max": 7.0}}}, "unknown key gates.recovry"),
     ({"paths": {"data": "x"}}, "unknown setting paths.data"),
     ({"tuning": {"spaces": {"recovery": {"params": {"max_dpth": [2, 3]}}}}},
      "unknown recovery hyper-parameter(s) max_dpth"),
     ({"validation": {"max_missing_rates": {"hrvv": 0.2}}},
      "unknown canonical column(s) hrvv")],
)
def test_unknown_keys_at_every_depth(override, expected):
    with pytest.raises(ConfigError) as err:
        load_settings(**override)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_yaml_key_names_the_file(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("tuning:\n  ntrials: 3\n")
    with pytest.raises(ConfigError, match=r"unknown setting tuning\.ntrials \(in config file "
                       + str(cfg).replace(".", r"\.")):
        load_settings(cfg)


@pytest.mark.parametrize(
    "name,value,expected",
    [("VELOREADY_TUNING__NTRIALS", "3",
      "unknown setting tuning.ntrials (from VELOREADY_TUNING__NTRIALS)"),
     ("VELOREADY_TUNNING__N_TRIALS", "3",
      "unknown setting VELOREADY_TUNNING__N_TRIALS in the environment"),
     ("VELOREADY_GATES__RECOVERY__RMSE_MX", "7", "unknown setting gates.recovery.rmse_mx"),
     ("VELOREADY_TUNING__N_TRIALS", "0",
      "tuning.n_trials = '0' (from VELOREADY_TUNING__N_TRIALS)"),
     ("VELOREADY_FAMILIES", "recovery", "VELOREADY_FAMILIES='recovery'")],
)
def test_unknown_or_bad_env_names_are_errors(monkeypatch, name, value, expected):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert expected in str(err.value)


def test_non_setting_env_names_are_not_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("VELOREADY_TIMING_FILE", str(tmp_path / "t.jsonl"))
    monkeypatch.setenv("VELOREADY_TEST_PG_URL", "postgresql://x")
    assert load_settings().seed == 7


@pytest.mark.parametrize(
    "text,expected",
    [("tuning:\n  n_trials: [5\n", "line 3, column 1: invalid YAML"),
     ("- seed\n", "must hold a mapping of settings at the top level, not a list")],
)
def test_bad_yaml_is_one_line_naming_the_file(tmp_path, text, expected):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert str(err.value).startswith(f"config file {cfg}") and expected in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_config_file(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")
    monkeypatch.setenv("VELOREADY_CONFIG", str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match=r"\(VELOREADY_CONFIG\) does not exist"):
        load_settings()
