"""Which models `run` plans: the config's list, on LARY-Sim and elsewhere."""

import types

from lary_jax import benchmark_run
from lary_jax.configs import default


def _names(on_sim: bool) -> list[str]:
  flags = types.SimpleNamespace(models_dir=None)
  return [m.name for m in benchmark_run.plan_models(
      flags, default.get_config(), on_sim=on_sim)]


def test_lary_sim_runs_every_default_model():
  assert _names(on_sim=True) == [
      "sim_oracle", "flow", "pixels", "random_vit", "run_lam"]


def test_larybench_data_leaves_out_what_needs_lary_sim(capsys):
  # sim_oracle reads recorded states; the run's LAM trains on LARY-Sim.
  assert _names(on_sim=False) == ["flow", "pixels", "random_vit"]
  err = capsys.readouterr().err
  assert "run: sim_oracle left out: it needs LARY-Sim" in err
  assert "run: run_lam left out: it needs LARY-Sim" in err
