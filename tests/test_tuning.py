import pytest

from veloready_pipeline.config import TuningSettings
from veloready_pipeline.tuning import derive_seed, grid_for, n_trials_for, new_study, suggest

SPACE = {"max_depth": [2, 5], "learning_rate": [0.01, 0.3], "booster": ["a", "b", "c"]}


def test_grid_axes():
    g = grid_for(SPACE, 3)
    assert g["max_depth"] == [2, 4, 5] or g["max_depth"] == [2, 3, 4, 5][:len(g["max_depth"])]
    assert g["learning_rate"][0] == pytest.approx(0.01) and g["learning_rate"][-1] == 0.3
    assert g["booster"] == ["a", "b", "c"]


def test_grid_trials_capped_by_grid_size():
    t = TuningSettings(sampler="grid", n_trials=1000, grid_points=2)
    assert n_trials_for(t, SPACE) == 2 * 2 * 3


@pytest.mark.parametrize("sampler", ["tpe", "grid"])
def test_studies_are_reproducible(sampler):
    t = TuningSettings(sampler=sampler, n_trials=6, grid_points=2)

    def run():
        study = new_study(t, SPACE, seed=5)
        study.optimize(lambda tr: suggest(tr, SPACE)["learning_rate"], n_trials=6)
        return [tr.params for tr in study.trials]

    assert run() == run()


def test_derived_seeds_differ_per_athlete_and_are_stable():
    assert derive_seed(7, "a1", "recovery") == derive_seed(7, "a1", "recovery")
    assert derive_seed(7, "a1", "recovery") != derive_seed(7, "a2", "recovery")
    assert derive_seed(7, "a1", "recovery") != derive_seed(8, "a1", "recovery")
