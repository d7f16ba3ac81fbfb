"""The picture helpers: where each tile lands in a panel, and what the figures hold."""

import numpy as np

from minifcn.viz import colorize, panel


def test_panel_places_every_tile_enlarged_with_white_gaps():
    rng = np.random.default_rng(0)
    a, b, c = (rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in ((3, 4), (2, 5), (3, 2)))
    grid = panel([[a, b], [c]], gap=1, scale=2)
    # row 1: a (4 wide), gap, b (5 wide) -> 10; row 2: c, padded to 10. Heights 3 + gap + 3 = 7. Then x2.
    assert grid.shape == (14, 20, 3)
    small = grid[::2, ::2]  # undo the nearest-neighbour enlargement
    assert (grid == np.repeat(np.repeat(small, 2, 0), 2, 1)).all()
    np.testing.assert_array_equal(small[:3, :4], a)
    np.testing.assert_array_equal(small[:2, 5:10], b)
    assert (small[2, 5:10] == 255).all()  # b is shorter than a: padded white below
    assert (small[:, 4] == 255).all() and (small[3] == 255).all()  # the gaps
    np.testing.assert_array_equal(small[4:7, :2], c)
    assert (small[4:7, 2:] == 255).all()


def test_colorize_draws_void_in_cream():
    rgb = colorize(np.array([[0, 1], [255, 15]], np.uint8))
    assert tuple(rgb[1, 0]) == (224, 224, 192) and tuple(rgb[0, 0]) == (0, 0, 0)
    assert len({tuple(v) for v in rgb.reshape(-1, 3)}) == 4


def test_the_legend_names_exactly_the_classes_shown_in_their_colours():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from minifcn.data import SIFTFLOW_CLASSES
    from minifcn.viz import class_legend

    fig = plt.figure(figsize=(6, 4))
    truth, pred = np.array([[3, 3], [255, 17]]), np.array([[3, 0], [17, 17]])
    share = class_legend(fig, [truth, pred], SIFTFLOW_CLASSES, columns=2)
    legend = fig.legends[0]
    names = [t.get_text() for t in legend.get_texts()]
    assert names == [SIFTFLOW_CLASSES[0], SIFTFLOW_CLASSES[3], SIFTFLOW_CLASSES[17], "void (ignored)"]
    patches = legend.get_patches()
    for patch, k in zip(patches, (0, 3, 17)):
        assert np.allclose(patch.get_facecolor()[:3], colorize(np.array([k]))[0] / 255)
    assert 0 < share < 0.4
    plt.close(fig)
