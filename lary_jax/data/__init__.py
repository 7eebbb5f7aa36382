"""Input side: media decoding, frame sampling, action normalisation, grain pipelines.

A domain package: it imports only the bottom layer (errors), and the
encoders, LAMs, probes and stages above read their inputs through it.
"""
