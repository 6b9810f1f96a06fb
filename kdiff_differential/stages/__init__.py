"""The steps around the model call, in pixel space: where the model runs (crop), what it
sees there (fill), and after decoding, colour match and the composite over the original."""
