"""Neural-network building blocks in Flax NNX, shared by every model family.

The bottom layer: these files import nothing of lary_jax but `errors`.
`vit_layers` (patch embedding, attention, ViT blocks: the ViT encoders, the
probes, UniVLA and villa-X), `conv_layers` (the VAE and tokenizer encoders),
`laq_layers` (LAPA's latent action quantiser).
"""
