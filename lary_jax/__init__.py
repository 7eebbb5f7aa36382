"""lary-jax: the LARY benchmark in JAX/Flax.

The package is built in layers; a module imports its own layer or a lower
one (tests/layers_test.py checks it):

  5 entry      main, commands, benchmark_run (`run`)
  4 stages     extract, upstream_npz, report, probes.classify/regress,
               lams.train_lam
  3 catalogue  encoders.registry: every encoder, LAM, baseline by name
  2 domains    data, sim, encoders (model files), lams, probes
  1 blocks     nn, encoders.convert (weights), atomic_io, run_claim,
               feature_store, metrics, mesh, errors, config_args, ...
"""

__version__ = "0.1.0"
