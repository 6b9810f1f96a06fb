"""Change maps (1 = change, 0 = keep): reading a map from an array, tensor or image,
shaping it in pixels (grow, feather, blur), the named presets, and bringing it to a
latent's size and frames."""
