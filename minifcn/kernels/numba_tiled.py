"""Register-tiled direct convolution at stride 1: the Numba backend's fast route for 3x3 layers.

im2col + GEMM copies every activation kh*kw times, then asks BLAS for a product
only Cout rows tall; for the 8-64 channel layers of a narrow net that runs at a
fraction of the machine's speed. Here an output tile -- 8 output channels by one
vector register of neighbouring pixels of one row -- stays in registers for the
whole reduction over input channels and kernel taps:

    acc[o, p] += w[o, c, i, j] * x[c, y + i*d, x0 + p + j*d]      for every (c, i, j)

One vector load of input pixels feeds 8 fused multiply-adds (each with its
weight broadcast), and the tile is written once, at the end. The weights are
packed so that the 8 a step needs lie side by side: ``packed[block, c, i, j, o]``.
A tile two rows tall (``rows=2``) lets each broadcast weight feed two
multiply-adds. (At stride 1 the input gradient is itself such a convolution, of
the output gradient with the flipped kernel; the Numba backend routes it as one.)
The weight gradient turns the tile around: 3 output channels x 9 taps x one
vector of pixel lanes of partial sums, each lane summing g[o, y, x] * x[c, y+i, x+j]
over the batch, added across lanes at the end.

The tile is as wide as one register holds float32 lanes: 16 pixels with AVX-512,
8 with AVX2 (``WIDTH``, from minifcn.cpu). Its accumulators then fit the register
file of either: 8 of AVX-512's 32 zmm (16 for two rows), 8 of AVX2's 16 ymm;
a 16-pixel tile in ymm would need all 16. The weight gradient's tile is 8 lanes
wide everywhere (``GRAD_WIDTH``).

Getting LLVM to emit this takes three things, all visible below:

- the tile is a stack array of constant size (``stack_array``), which LLVM
  splits into registers; a Numba ``np.empty`` lives on the heap and cannot be;
- the loop vectoriser is off while these kernels compile: it would vectorise
  the reduction over channels instead and spill every accumulator to memory;
- the straight-line (SLP) vectoriser is on: it packs the unrolled pixel updates
  of each output channel into one vector instruction.

Measured with 2 threads on a 2-core Intel Xeon (LLVM: rocketlake, float32 GEMM
peak about 314 GFLOP/s), on the small net's 3x3 layers: with AVX-512, forward
134-199 GFLOP/s one row and 144-215 two rows 16 pixels wide, weight gradient
95-166 at 8 lanes; compiled for AVX2 only, forward 85-128 at 8 pixels against
65-91 at 16, weight gradient 55-73 at 8 lanes.
"""

import contextlib
import types as pytypes

import numba
import numpy as np
from numba import carray, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

TILE_CHANNELS = 8  # output channels per forward tile
GRAD_CHANNELS, GRAD_TAPS = 3, 3  # the weight-gradient tile: 3 output channels x 3x3 taps x one vector of pixels
WIDTHS = (8, 16)  # tile widths in pixels: one float32 register of AVX2 (ymm) or of AVX-512 (zmm)
# The weight gradient's 27 partial sums are 8 lanes wide on every CPU: measured with 2 threads on an Intel
# Xeon, 95-166 GFLOP/s against 80-120 for 16 lanes with AVX-512 (whose 27 zmm partial sums spill), and 55-73
# against 38-56 with AVX2, on the small net's 3x3 layers.
GRAD_WIDTH = 8


@intrinsic
def stack_array(typingctx, size, dtype):
    """A pointer to ``size`` (a constant) uninitialised values on the stack: registers, once LLVM is done."""
    if not isinstance(size, types.IntegerLiteral):
        return None
    count = size.literal_value

    def codegen(context, builder, signature, args):
        element = context.get_value_type(dtype.dtype)
        return cgutils.alloca_once(builder, element, size=context.get_constant(types.intp, count))

    return types.CPointer(dtype.dtype)(size, dtype), codegen


@contextlib.contextmanager
def straight_line_vectorizer():
    """Numba compiles a kernel at its first call: compile these with only the SLP vectoriser (see above).

    (The switch is Numba's global configuration; it is restored at once. Kernels come from the disk
    cache after the first run, so later processes do not depend on it.)
    """
    saved = numba.config.LOOP_VECTORIZE, numba.config.SLP_VECTORIZE
    numba.config.LOOP_VECTORIZE, numba.config.SLP_VECTORIZE = False, True
    try:
        yield
    finally:
        numba.config.LOOP_VECTORIZE, numba.config.SLP_VECTORIZE = saved


@njit(inline="always")
def _store(acc, out, n, o0, y, x0, channels, pixels, first):
    """out[n, o0 + o, y, x0 + p] = acc[first + o * pixels + p], the tile's outputs that exist. A whole tile is
    written by loops of constant length, which LLVM unrolls into vector stores; a tile at the right edge or
    past the last channel, element by element."""
    if o0 + channels <= out.shape[1] and x0 + pixels <= out.shape[3]:
        for o in range(channels):
            for p in range(pixels):
                out[n, o0 + o, y, x0 + p] = acc[first + o * pixels + p]
    else:
        for o in range(min(channels, out.shape[1] - o0)):
            for p in range(min(pixels, out.shape[3] - x0)):
                out[n, o0 + o, y, x0 + p] = acc[first + o * pixels + p]


def _kernels(pixels, channels=TILE_CHANNELS):
    """The tile kernels for tiles ``pixels`` wide and ``channels`` tall, as closures over their constant sizes.

    (Numba freezes a closure's constants into the code it compiles and keys its disk cache by them, so each
    width compiles once per CPU.)
    """
    tile = channels * pixels
    tile2 = 2 * tile
    grad_tile = GRAD_CHANNELS * GRAD_TAPS * GRAD_TAPS * pixels

    @njit(parallel=True, cache=True, fastmath=True)
    def forward(xp, packed, dh, dw, out):
        """out[n, o, y, x] = sum_{c,i,j} w[o, c, i, j] xp[n, c, y + i*dh, x + j*dw], one tile at a time."""
        N, C = xp.shape[0], xp.shape[1]
        blocks, kh, kw = packed.shape[0], packed.shape[2], packed.shape[3]
        O, OH, OW = out.shape[1], out.shape[2], out.shape[3]
        for task in prange(N * blocks * OH):
            n, block, y = task // (blocks * OH), (task // OH) % blocks, task % OH
            acc = carray(stack_array(tile, xp.dtype), (tile,))
            for x0 in range(0, OW, pixels):
                for k in range(tile):
                    acc[k] = 0
                for c in range(C):
                    for i in range(kh):
                        row = xp[n, c, y + i * dh]
                        for j in range(kw):
                            weights, start = packed[block, c, i, j], x0 + j * dw
                            for o in range(channels):
                                w = weights[o]
                                for p in range(pixels):  # unsigned index: no negative-index wraparound code
                                    acc[o * pixels + p] += w * row[np.uint64(start + p)]
                _store(acc, out, n, block * channels, y, x0, channels, pixels, 0)

    @njit(parallel=True, cache=True, fastmath=True)
    def forward_rows(xp, packed, dh, dw, out):
        """The forward tile twice as tall: output rows y and y + 1 of the tile's channels.

        Each weight, broadcast once, feeds two multiply-adds (one per row) instead of one, so a step of 16
        multiply-adds loads 8 weights and 2 input vectors where the one-row tile loads 16 and 2. xp needs one
        spare row at the bottom when the number of output rows is odd.
        """
        N, C = xp.shape[0], xp.shape[1]
        blocks, kh, kw = packed.shape[0], packed.shape[2], packed.shape[3]
        O, OH, OW = out.shape[1], out.shape[2], out.shape[3]
        pairs = (OH + 1) // 2
        for task in prange(N * blocks * pairs):
            n, block, y = task // (blocks * pairs), (task // pairs) % blocks, 2 * (task % pairs)
            acc = carray(stack_array(tile2, xp.dtype), (tile2,))
            for x0 in range(0, OW, pixels):
                for k in range(tile2):
                    acc[k] = 0
                for c in range(C):
                    for i in range(kh):
                        upper, lower = xp[n, c, y + i * dh], xp[n, c, y + 1 + i * dh]
                        for j in range(kw):
                            weights, start = packed[block, c, i, j], x0 + j * dw
                            for o in range(channels):
                                w = weights[o]
                                for p in range(pixels):
                                    acc[o * pixels + p] += w * upper[np.uint64(start + p)]
                                    acc[tile + o * pixels + p] += w * lower[np.uint64(start + p)]
                _store(acc, out, n, block * channels, y, x0, channels, pixels, 0)
                if y + 1 < OH:
                    _store(acc, out, n, block * channels, y + 1, x0, channels, pixels, tile)

    # Fused multiply-adds and reordered sums, but not every fastmath flag: with all of them, this kernel
    # computed other bits when loaded from Numba's disk cache than when just compiled, so a run resumed in a
    # new process drifted from the run that never stopped (tests/test_backend.py checks both ways agree).
    @njit(parallel=True, cache=True, fastmath={"contract", "reassoc"})
    def weight_grad_3x3(xp, gp, dh, dw, out):
        """out[o, c, i, j] = sum_{n,y,x} gp[n, o, y, x] xp[n, c, y + i*dh, x + j*dw] for a 3x3 kernel."""
        N, C = xp.shape[0], xp.shape[1]
        O, OH, OWp = gp.shape[1], gp.shape[2], gp.shape[3]  # gp is zero-padded to whole tiles of pixels
        blocks = (O + GRAD_CHANNELS - 1) // GRAD_CHANNELS
        for task in prange(blocks * C):
            block, c = task // C, task % C
            acc = carray(stack_array(grad_tile, xp.dtype), (grad_tile,))
            for k in range(grad_tile):
                acc[k] = 0
            for n in range(N):
                for y in range(OH):
                    for x0 in range(0, OWp, pixels):
                        for o in range(GRAD_CHANNELS):
                            g = gp[n, min(block * GRAD_CHANNELS + o, O - 1), y]  # a short last block repeats
                            for i in range(GRAD_TAPS):
                                row = xp[n, c, y + i * dh]
                                for j in range(GRAD_TAPS):
                                    start = x0 + j * dw
                                    for p in range(pixels):
                                        acc[((o * GRAD_TAPS + i) * GRAD_TAPS + j) * pixels + p] += \
                                            g[np.uint64(x0 + p)] * row[np.uint64(start + p)]
            for o in range(min(GRAD_CHANNELS, O - block * GRAD_CHANNELS)):
                for i in range(GRAD_TAPS):
                    for j in range(GRAD_TAPS):
                        total = acc[((o * GRAD_TAPS + i) * GRAD_TAPS + j) * pixels]
                        for p in range(1, pixels):
                            total += acc[((o * GRAD_TAPS + i) * GRAD_TAPS + j) * pixels + p]
                        out[block * GRAD_CHANNELS + o, c, i, j] = total

    return pytypes.SimpleNamespace(pixels=pixels, channels=channels, forward=forward, forward_rows=forward_rows,
                                   weight_grad_3x3=weight_grad_3x3)


KERNELS = {pixels: _kernels(pixels) for pixels in WIDTHS}
# The forward tiles, as (output channels, rows, vectors per row): 8 channels one vector wide, one row or
# two; and, for AVX2's 16 registers, fewer channels over two or three vectors of a row (12 accumulators,
# and one broadcast weight feeds 2-3 multiply-adds). Measured forward with 2 threads on an AMD Zen 3
# (AVX2, GEMM peak about 120 GFLOP/s), batch 8: 16->16 at 163^2 67 (8 x 8 px) against 101 GFLOP/s (4 x 24);
# 64->64 at 41^2 46 against 85 (6 x 16). With AVX-512's 32 registers, also 16 channels one vector wide: each
# input vector feeds 16 multiply-adds instead of 8. On a 2-core AMD Zen 4 (forward, 2 threads, batch 8) it ran
# 64->64 at 41^2 at 162-171 GFLOP/s against 108-116 (8 channels), 16->32 at 82^2 136-158 against 108-120.
FORWARD_TILES = {"tiled": (8, 1, 1), "tiled2": (8, 2, 1), "tiled16": (16, 1, 1), "tiled6": (6, 1, 2),
                 "tiled4": (4, 1, 3)}
_SHAPED = {}
LONG_ROW = 80  # pixels: rows at least this long are copied by slices (see _place)


def forward_kernels(channels, vectors, width):
    """The kernels of a ``channels`` x (``vectors`` x ``width`` pixels) tile, made on first use."""
    if (channels, vectors) == (TILE_CHANNELS, 1):
        return KERNELS[width]
    key = channels, vectors * width
    if key not in _SHAPED:
        _SHAPED[key] = _kernels(vectors * width, channels)
    return _SHAPED[key]


def forward_tiles(width=None):
    """The forward tiles worth trying on this CPU: with 256-bit vectors (16 registers) those of at most 12
    accumulators; with AVX-512 (32 registers) those of 8 channels, one row or two, and of 16 channels."""
    if (width or WIDTH) >= 16:
        return ["tiled", "tiled2", "tiled16"]
    return [name for name, (c, r, v) in FORWARD_TILES.items() if c * r * v <= 12]


def default_width():
    """The tile width for this CPU: the float32 lanes of the vectors its kernels compile to (see minifcn.cpu)."""
    from .. import cpu
    return 16 if cpu.vector_width(cpu.compiled_features())[0] >= 512 else 8


@njit(parallel=True, cache=True)
def _place(x, top, left, out):
    """out[n, c] = zeros with x[n, c] at row ``top``, column ``left``: one pass, one (n, c) plane per task.

    Rows of LONG_ROW pixels or more go by slices: Numba turns a slice assignment into a plain copy or fill,
    1.4-2.5x faster than an element loop on the small net's 82- to 326-px maps (2-core Zen 4). A slice costs
    more to set up, though: on the classifier's rows of 8-64 pixels the element loops took 0.15-0.31 ms a
    call where slices took 0.17-0.38.
    """
    N, C, H, W = x.shape
    Wp = out.shape[3]
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        for r in range(out.shape[2]):
            h = r - top
            if W >= LONG_ROW:
                row = out[n, c, r]
                if h < 0 or h >= H:
                    row[:] = 0
                else:
                    row[:left] = 0
                    row[left:left + W] = x[n, c, h]
                    row[left + W:] = 0
            elif h < 0 or h >= H:
                for col in range(Wp):
                    out[n, c, r, col] = 0
            else:
                for col in range(left):
                    out[n, c, r, col] = 0
                for col in range(W):  # unsigned indices: no negative-index test, so this copy vectorises
                    out[n, c, r, np.uint64(left + col)] = x[n, c, h, np.uint64(col)]
                for col in range(left + W, Wp):
                    out[n, c, r, col] = 0


def _placed(x, shape, top=0, left=0):
    out = np.empty(shape, dtype=x.dtype)
    _place(x, top, left, out)
    return out


def _padded_input(x, padding, out_width, kernel_width, dilation, pixels, spare_rows=0):
    """x zero-padded, wide enough that the last tile of every row reads inside the array, and ``spare_rows``
    of zeros more at the bottom."""
    N, C, H, W = x.shape
    (ph, pw), width = padding, -(-out_width // pixels) * pixels + dilation * (kernel_width - 1)
    return _placed(x, (N, C, H + 2 * ph + spare_rows, max(width, W + 2 * pw)), ph, pw)


def _pack(w, channels=TILE_CHANNELS):
    """(O, C, kh, kw) -> (blocks, C, kh, kw, channels): each tile's output channels side by side (zeros pad
    the last block)."""
    O = w.shape[0]
    blocks = -(-O // channels)
    packed = np.zeros((blocks * channels,) + w.shape[1:], dtype=w.dtype)
    packed[:O] = w
    return np.ascontiguousarray(packed.reshape((blocks, channels) + w.shape[1:]).transpose(0, 2, 3, 4, 1))


def conv2d(x, w, padding, dilation, rows=1, pixels=None, channels=TILE_CHANNELS, vectors=1):
    """Stride-1 convolution, y[n, o] = sum_{c,i,j} w[o, c, i, j] x[n, c, oh - p + i*d, ow - p + j*d], by tiles
    of ``channels`` output channels and one output row or two (``rows``), ``vectors`` times ``pixels``
    wide (default: this CPU's, ``default_width``); see FORWARD_TILES."""
    kernels = forward_kernels(channels, vectors, pixels or WIDTH)
    dtype = np.result_type(x.dtype, w.dtype)
    (kh, kw), (dh, dw) = w.shape[2:], dilation
    OH = x.shape[2] + 2 * padding[0] - dh * (kh - 1)
    OW = x.shape[3] + 2 * padding[1] - dw * (kw - 1)
    xp = _padded_input(x.astype(dtype, copy=False), padding, OW, kw, dw, kernels.pixels, spare_rows=rows - 1)
    out = np.empty((x.shape[0], w.shape[0], OH, OW), dtype=dtype)
    run_forward(kernels, xp, w.astype(dtype, copy=False), dilation, rows, out)
    return out


def run_forward(kernels, xp, w, dilation, rows, out):
    """out = the unpadded convolution of xp (wide enough for whole tiles, ``rows - 1`` spare rows) with w."""
    with straight_line_vectorizer():
        (kernels.forward_rows if rows == 2 else kernels.forward)(xp, _pack(w, kernels.channels), *dilation, out)


def conv2d_weight_grad(g, x, w_shape, padding, dilation, pixels=GRAD_WIDTH):
    """dw[o, c, i, j] = sum_{n,y,x} g[n, o, y, x] x[n, c, y - p + i*d, x - p + j*d], for 3x3 kernels."""
    kernels = KERNELS[pixels]
    dtype = np.result_type(x.dtype, g.dtype)
    N, O, OH, OW = g.shape
    xp = _padded_input(x.astype(dtype, copy=False), padding, OW, 3, dilation[1], kernels.pixels)
    width = -(-OW // kernels.pixels) * kernels.pixels
    g = np.ascontiguousarray(g.astype(dtype, copy=False))
    gp = g if width == OW else _placed(g, (N, O, OH, width))  # the tail lanes add 0
    return run_weight_grad(xp, gp, w_shape, dilation, dtype, pixels)


def run_weight_grad(xp, gp, w_shape, dilation, dtype, pixels=GRAD_WIDTH):
    """The 3x3 weight gradient of padded xp and gp (zero-padded to whole tiles of ``pixels``)."""
    out = np.empty(w_shape, dtype=dtype)
    with straight_line_vectorizer():
        KERNELS[pixels].weight_grad_3x3(xp, gp, dilation[0], dilation[1], out)
    return out


WIDTH = default_width()
