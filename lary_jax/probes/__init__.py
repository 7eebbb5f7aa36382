"""Probes on frozen features: the attentive classifier, regression heads.

The models and their training (`attentive_probe`, `multi_head`,
`train_classifier`; `mlp_decoder`, `dit_decoder`, `train_regressor`; their
one loop in `training_core`, each epoch's predictions in `run_state`) form a
domain package that imports only `data` and the bottom layer
(`lary_jax.nn`, feature store, metrics, run claim and checkpoint).
`classify` and `regress` are the stages above them: features in, results
and reports out.
"""
