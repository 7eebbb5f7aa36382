"""The workdir layout, pinned: old workdirs must resume and report."""

from lary_jax import workdir_layout as layout


def test_paths_are_the_layout_old_workdirs_have():
  w = "/w"
  probe = layout.regress_dir(w, "calvin", "lapa", "dit", "relative")
  seed = layout.seed_dir(layout.classify_dir(w, "sim", "flow"), 3)
  got = {
      "tfds": layout.tfds_dir(w),
      "tfds tiny": layout.tfds_dir(w, tiny=True),
      "sim": layout.sim_data_dir(w),
      "sim tiny": layout.sim_data_dir(w, tiny=True),
      "store": layout.features_dir(layout.features_root(w), "calvin",
                                   "validation", "siglip2"),
      "la": layout.latent_actions_dir(w),
      "classify": layout.classify_dir(w, "sim", "flow"),
      "regress": probe,
      "seed": seed,
      "results": layout.results_file(seed),
      "summary": layout.results_file(probe),
      "claim": layout.settings_file(seed),
      "checkpoints": layout.checkpoints_dir(seed),
      "epoch": layout.epoch_file(seed, 7),
      "confusion": layout.confusion_stem(seed, "honest"),
      "per class": layout.per_class_file(seed, "upstream_style"),
      "best": layout.best_result_file(seed),
      "trajectories": layout.trajectories_plot(seed, "unseen"),
      "lam": layout.lam_dir(w, "lapa_sim"),
      "lam model": layout.lam_model_dir(layout.lam_dir(w, "lapa_sim")),
      "marker": layout.stage_marker(w, "classify sim/flow"),
      "timings": layout.run_timings_file(w),
      "report": layout.report_files(w),
  }
  assert got == {
      "tfds": "/w/tfds",
      "tfds tiny": "/w/tfds_tiny",
      "sim": "/w/lary_sim",
      "sim tiny": "/w/lary_sim_tiny",
      "store": "/w/features/calvin/validation/siglip2",
      "la": "/w/latent_actions",
      "classify": "/w/classify/sim/flow",
      "regress": "/w/regress/calvin/lapa/dit_relative",
      "seed": "/w/classify/sim/flow/seed_3",
      "results": "/w/classify/sim/flow/seed_3/results.json",
      "summary": "/w/regress/calvin/lapa/dit_relative/results.json",
      "claim": "/w/classify/sim/flow/seed_3/run.json",
      "checkpoints": "/w/classify/sim/flow/seed_3/checkpoints",
      "epoch": "/w/classify/sim/flow/seed_3/evals/epoch_007.npz",
      "confusion": "/w/classify/sim/flow/seed_3/confusion_honest",
      "per class":
          "/w/classify/sim/flow/seed_3/per_class_upstream_style.csv",
      "best": "/w/classify/sim/flow/seed_3/best_result.csv",
      "trajectories": "/w/classify/sim/flow/seed_3/trajectories_unseen.png",
      "lam": "/w/lam/lapa_sim",
      "lam model": "/w/lam/lapa_sim/model",
      "marker": "/w/run/classify sim_flow.json",
      "timings": "/w/run_timings.json",
      "report": ("/w/report.md", "/w/report.html"),
  }


def test_seed_folders_are_told_from_the_others():
  assert layout.is_seed_dir("/w/classify/sim/flow/seed_0")
  assert not layout.is_seed_dir("/w/classify/sim/flow")
  assert layout.probe_root("/w", layout.CLASSIFY) == "/w/classify"
  assert layout.probe_root("/w", layout.REGRESS) == "/w/regress"
