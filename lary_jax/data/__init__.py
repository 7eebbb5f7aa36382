"""Input side: media decoding, frame sampling, action normalisation, grain pipelines."""
