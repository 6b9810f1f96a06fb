"""Files read and written: images, maps and video clips, each written atomically."""
