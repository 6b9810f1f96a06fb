"""The whole edit in one call: the settings, checked once, and the one path that takes
an image or a clip and its map through every step to the finished pixels."""
