"""The figures that explain a run: every panel carries a label a person can read."""

import numpy as np
import pytest
import torch

from kdiff_differential.editing.figures import GAP, LABEL, mask_grid, strip


def has_text(band: np.ndarray) -> bool:
    return bool((band < 128).any())


def test_the_strip_labels_its_panels_and_shows_a_keep_map_as_given():
    original = np.full((40, 48, 3), 90, np.uint8)
    result = np.full((40, 48, 3), 200, np.uint8)
    change = torch.zeros(40, 48)
    change[:, 24:] = 1
    shown = strip(original, change, result)
    assert shown.shape == (LABEL + 40, 3 * 48 + 2 * GAP, 3)
    middle = slice(48 + GAP, 2 * 48 + GAP)
    assert shown[LABEL:, middle][:, :24].max() == 0 and shown[LABEL:, middle][:, 24:].min() == 255
    for left in (0, 48 + GAP, 2 * (48 + GAP)):
        assert has_text(shown[:LABEL, left : left + 48])
    # A keep-map file (white = keep) arrives flipped to change strengths; the strip shows
    # the file as the user gave it, under another label.
    kept = strip(original, change, result, keep_map=True)
    assert kept[LABEL:, middle][:, :24].min() == 255 and kept[LABEL:, middle][:, 24:].max() == 0
    assert not np.array_equal(kept[:LABEL, middle], shown[:LABEL, middle])
    assert np.array_equal(kept[:, : 48 + GAP], shown[:, : 48 + GAP])


def test_the_masks_grid_labels_each_tile_with_its_step_and_sigma():
    masks = [torch.full((20, 20), float(i % 2)) for i in range(5)]
    plain = mask_grid(masks, 1.0)
    labelled = mask_grid(masks, 1.0, sigmas=[14.6, 7.1, 3.0, 1.2, 0.03])
    rows, columns = 2, 3
    assert plain.shape[1] == labelled.shape[1] and labelled.shape[0] == plain.shape[0] + rows * LABEL
    tile = (plain.shape[1] + GAP) // columns - GAP
    bands = [labelled[r * (LABEL + tile + GAP) :][:LABEL, c * (tile + GAP) :][:, :tile] for r, c in ((0, 0), (0, 1), (0, 2), (1, 0), (1, 1))]
    assert all(has_text(band) for band in bands)
    assert len({band.tobytes() for band in bands}) == 5  # each says something else
    with pytest.raises(ValueError, match="one noise level per mask"):
        mask_grid(masks, 1.0, sigmas=[1.0])


def test_the_masks_grid_leaves_its_empty_cells_blank_and_frames_its_tiles():
    masks = [torch.full((20, 20), 1.0) for _ in range(5)]  # 3 columns, 2 rows: one cell empty
    grid = mask_grid(masks, 1.0)
    tile = (grid.shape[1] + GAP) // 3 - GAP
    empty = grid[tile + 2 * GAP :, 2 * (tile + GAP) + GAP :]  # the last cell, past the frame of its neighbours
    assert empty.size and (empty == 255).all()
    separator = grid[:tile, tile : tile + GAP]  # between the first two tiles
    assert (separator != 255).any(axis=-1).all()


def test_a_label_draws_each_hyphen_of_a_flag_apart():
    from kdiff_differential.editing.figures import labelled

    band = labelled(np.zeros((4, 80, 3), np.uint8), "--grow")[:LABEL].min(axis=-1)
    # The row through the hyphens, left of the first letter: two runs of ink, not one.
    ink = band < 128
    row = ink[:, :9][np.argmax(ink[:, :9].sum(axis=1))]
    runs = np.count_nonzero(np.diff(np.concatenate([[0], row.astype(int), [0]])) == 1)
    assert runs == 2
