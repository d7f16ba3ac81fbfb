"""Small maps side by side: the register tiles on maps narrower than a tile.

A forward tile computes 16 neighbouring pixels of a row (8 with AVX2), and the weight gradient's tile 8.
On the 8 x 8 and 4 x 4 maps at the bottom of a classifier a row fills half or a quarter of a 16-pixel
tile, and the other lanes multiply zeros. Here ``g`` images of the batch are laid side by side in one
wide image, each in a zero-padded cell of its own:

    wide[n // g, c, ph + y, (n % g) * cell + pw + x] = x[n, c, y, x],      cell = W + 2 pw

and the convolution runs unpadded over the wide image. An output column ox of a cell reads the cell's
padded columns ox ... ox + d(kw - 1), all inside the cell when ox < OW, so each image's output is the
first OW columns of its cell; the d(kw - 1) columns that straddle two cells are computed and dropped.
On 8 x 8 maps (3 x 3, pad 1) a row of 8 cells is 80 pixels, 5 whole tiles of 16: 80 % of the lanes do
useful work instead of 50 %. The weight gradient sums g * x over every position of the wide output
gradient, which is zero on the dropped columns, so its sum is the images' sum exactly.
"""

import functools

import numpy as np
from numba import njit

from . import numba_tiled

MOST_SIDES = 16  # images in one row of cells


def _whole(n, pixels):
    return -(-n // pixels) * pixels


def _lanes(N, g, W, pw, kw, dw, pixels):
    """The tile lanes a batch of N maps W wide takes with g of them side by side in each row of cells (the
    last row may be part empty); g = 1 is the tiles' own cost, one padded map per row."""
    return -(-N // g) * _whole(g * (W + 2 * pw) - dw * (kw - 1), pixels)


@functools.lru_cache(maxsize=None)  # asked on every convolution a route is chosen for: a pure function of ints
def sides(N, W, pw, kw, dw, pixels):
    """How many images to lay side by side: the count (1 to MOST_SIDES) that takes the fewest lanes over
    the whole batch; the fewer images the better on a tie."""
    if W + 2 * pw - dw * (kw - 1) <= 0:
        return 1
    return min(range(1, min(N, MOST_SIDES) + 1), key=lambda g: (_lanes(N, g, W, pw, kw, dw, pixels), g))


def worth(input_shape, geo, pixels):
    """Whether laying images side by side saves a quarter of the lanes or more: a route worth measuring."""
    N, _, _, W = input_shape
    if geo.stride != (1, 1) or N < 2 or geo.out[1] < 1:
        return False
    shape = N, W, geo.padding[1], geo.kernel[1], geo.dilation[1], pixels
    g = sides(*shape)
    return g > 1 and _lanes(N, g, *shape[1:]) <= 0.75 * _lanes(N, 1, *shape[1:])


# The two copies run on one thread: they move a few MB at most, and a serial kernel compiles in a fraction
# of a parallel one's second (a cold start compiles them).
@njit(cache=True)
def _spread(x, g, cell, top, left, wide):
    """wide[n // g, c, top + y, (n % g) * cell + left + x] = x[n, c, y, x]; wide arrives zeroed."""
    N, C, H, W = x.shape
    for nc in range(N * C):
        n, c = nc // C, nc % C
        row0, col0 = top, (n % g) * cell + left
        for y in range(H):
            for col in range(W):
                wide[n // g, c, row0 + y, np.uint64(col0 + col)] = x[n, c, y, np.uint64(col)]


@njit(cache=True)
def _gather(wide, g, cell, out):
    """out[n, o, y, x] = wide[n // g, o, y, (n % g) * cell + x]: each image's columns of its cell."""
    N, O, H, W = out.shape
    for no in range(N * O):
        n, o = no // O, no % O
        col0 = (n % g) * cell
        for y in range(H):
            for col in range(W):
                out[n, o, y, np.uint64(col)] = wide[n // g, o, y, np.uint64(col0 + col)]


def _spread_input(x, g, padding, width, spare_rows=0):
    """x in cells of g side by side, zero-padded by ``padding``, ``width`` columns wide (at least the cells)."""
    N, C, H, W = x.shape
    ph, pw = padding
    cell = W + 2 * pw
    wide = np.zeros((-(-N // g), C, H + 2 * ph + spare_rows, max(width, g * cell)), dtype=x.dtype)
    _spread(np.ascontiguousarray(x), g, cell, ph, pw, wide)
    return wide


def conv2d(x, w, padding, dilation, rows=1, channels=numba_tiled.TILE_CHANNELS, vectors=1):
    """The forward tiles of numba_tiled.conv2d (stride 1) over images side by side."""
    kernels = numba_tiled.forward_kernels(channels, vectors, numba_tiled.WIDTH)
    dtype = np.result_type(x.dtype, w.dtype)
    N, _, H, W = x.shape
    (kh, kw), (dh, dw), (ph, pw) = w.shape[2:], dilation, padding
    OH, OW = H + 2 * ph - dh * (kh - 1), W + 2 * pw - dw * (kw - 1)
    g = sides(N, W, pw, kw, dw, kernels.pixels)
    cell = W + 2 * pw
    wide_ow = g * cell - dw * (kw - 1)
    wide = _spread_input(x.astype(dtype, copy=False), g, padding, _whole(wide_ow, kernels.pixels) + dw * (kw - 1),
                         spare_rows=rows - 1)
    wide_out = np.empty((wide.shape[0], w.shape[0], OH, wide_ow), dtype=dtype)
    numba_tiled.run_forward(kernels, wide, w.astype(dtype, copy=False), dilation, rows, wide_out)
    out = np.empty((N, w.shape[0], OH, OW), dtype=dtype)
    _gather(wide_out, g, cell, out)
    return out


def conv2d_weight_grad(gy, x, w_shape, padding, dilation):
    """The 3x3 weight-gradient tile of numba_tiled over images side by side, gy in the same cells."""
    pixels = numba_tiled.GRAD_WIDTH
    dtype = np.result_type(x.dtype, gy.dtype)
    N, _, _, W = x.shape
    pw, dw = padding[1], dilation[1]
    g = sides(N, W, pw, 3, dw, pixels)
    cell = W + 2 * pw
    width = _whole(g * cell - 2 * dw, pixels)
    wide_x = _spread_input(x.astype(dtype, copy=False), g, padding, width + 2 * dw)
    wide_g = np.zeros((wide_x.shape[0], gy.shape[1], gy.shape[2], width), dtype=dtype)
    _spread(np.ascontiguousarray(gy.astype(dtype, copy=False)), g, cell, 0, 0, wide_g)
    return numba_tiled.run_weight_grad(wide_x, wide_g, w_shape, dilation, dtype)
