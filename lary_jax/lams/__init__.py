"""Latent action models (LAMs) in Flax NNX: LAPA's LAQs, UniVLA, villa-X.

`lapa` (LAQ on pixels or a frozen backbone's tokens, with `nsvq`),
`embedded` (backbones saved inside upstream's LAQ checkpoints), `univla`
and `villa_x` (with `vector_quantizer`). A domain package beside the
encoders: it uses encoder files (a backbone, `contract`, `families`, the
weights library `convert`) and the blocks in `lary_jax.nn`; the catalogue
(`encoders.registry`) lists these LAMs by name and is never imported here.
`train_lam` is a stage above: it trains a LAQ from a config, its folder
claimed and checkpointed as the probes' are (`run_claim`, `run_checkpoints`).
"""
