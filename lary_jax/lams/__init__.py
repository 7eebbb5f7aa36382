"""Latent action models (LAMs) in Flax NNX: LAPA's LAQ (`lapa`), NSVQ."""
