"""Register-tiled direct convolution at stride 1: the Numba backend's fast route for 3x3 layers.

im2col + GEMM copies every activation kh*kw times, then asks BLAS for a product
only Cout rows tall; for the 8-64 channel layers of a narrow net that runs at a
fraction of the machine's speed. Here an output tile -- 8 output channels by 16
neighbouring pixels of one row -- stays in registers for the whole reduction
over input channels and kernel taps:

    acc[o, p] += w[o, c, i, j] * x[c, y + i*d, x0 + p + j*d]      for every (c, i, j)

One vector load of 16 input pixels feeds 8 fused multiply-adds (each with its
weight broadcast), and the tile is written once, at the end. The weights are
packed so that the 8 a step needs lie side by side: ``packed[block, c, i, j, o]``.
(At stride 1 the input gradient is itself such a convolution, of the output
gradient with the flipped kernel; the Numba backend routes it as one.)
The weight gradient turns the tile around: 3 output channels x 9 taps x 16
pixel lanes of partial sums, each lane summing g[o, y, x] * x[c, y+i, x+j] over
the batch, added across lanes at the end.

Getting LLVM to emit this takes three things, all visible below:

- the tile is a stack array of constant size (``stack_array``), which LLVM
  splits into registers; a Numba ``np.empty`` lives on the heap and cannot be;
- the loop vectoriser is off while these kernels compile: it would vectorise
  the reduction over channels instead and spill every accumulator to memory;
- the straight-line (SLP) vectoriser is on: it packs the 16 unrolled pixel
  updates of each output channel into one AVX-512 (or two AVX2) instructions.

Measured on one core of the 2-core Zen 4 these were built on (sgemm peak about
100 GFLOP/s): forward 46-97 GFLOP/s and weight gradient 40-61 on the small
net's 8-64 channel layers, against 7-65 and 11-54 for im2col + GEMM.
"""

import contextlib

import numba
import numpy as np
from numba import carray, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

TILE_CHANNELS, TILE_PIXELS = 8, 16  # the forward tile: 8 x 16 accumulators (8 AVX-512 registers in float32)
GRAD_CHANNELS, GRAD_TAPS = 3, 3  # the weight-gradient tile: 3 output channels x 3x3 taps x 16 lanes
TILE = TILE_CHANNELS * TILE_PIXELS
GRAD_TILE = GRAD_CHANNELS * GRAD_TAPS * GRAD_TAPS * TILE_PIXELS


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


@njit(parallel=True, cache=True, fastmath=True)
def _forward(xp, packed, dh, dw, out):
    """out[n, o, y, x] = sum_{c,i,j} w[o, c, i, j] xp[n, c, y + i*dh, x + j*dw], one tile at a time."""
    N, C = xp.shape[0], xp.shape[1]
    blocks, kh, kw = packed.shape[0], packed.shape[2], packed.shape[3]
    O, OH, OW = out.shape[1], out.shape[2], out.shape[3]
    for task in prange(N * blocks * OH):
        n, block, y = task // (blocks * OH), (task // OH) % blocks, task % OH
        acc = carray(stack_array(TILE, xp.dtype), (TILE,))
        for x0 in range(0, OW, TILE_PIXELS):
            for k in range(TILE):
                acc[k] = 0
            for c in range(C):
                for i in range(kh):
                    row = xp[n, c, y + i * dh]
                    for j in range(kw):
                        weights, start = packed[block, c, i, j], x0 + j * dw
                        for o in range(TILE_CHANNELS):
                            w = weights[o]
                            for p in range(TILE_PIXELS):  # unsigned index: no negative-index wraparound code
                                acc[o * TILE_PIXELS + p] += w * row[np.uint64(start + p)]
            for o in range(min(TILE_CHANNELS, O - block * TILE_CHANNELS)):
                for p in range(min(TILE_PIXELS, OW - x0)):
                    out[n, block * TILE_CHANNELS + o, y, x0 + p] = acc[o * TILE_PIXELS + p]


# Fused multiply-adds and reordered sums, but not every fastmath flag: with all of them, this kernel computed
# other bits when loaded from Numba's disk cache than when just compiled, so a run resumed in a new process
# drifted from the run that never stopped (tests/test_backend.py checks both ways agree).
@njit(parallel=True, cache=True, fastmath={"contract", "reassoc"})
def _weight_grad_3x3(xp, gp, dh, dw, out):
    """out[o, c, i, j] = sum_{n,y,x} gp[n, o, y, x] xp[n, c, y + i*dh, x + j*dw] for a 3x3 kernel."""
    N, C = xp.shape[0], xp.shape[1]
    O, OH, OWp = gp.shape[1], gp.shape[2], gp.shape[3]  # gp is zero-padded to whole tiles of pixels
    blocks = (O + GRAD_CHANNELS - 1) // GRAD_CHANNELS
    for task in prange(blocks * C):
        block, c = task // C, task % C
        acc = carray(stack_array(GRAD_TILE, xp.dtype), (GRAD_TILE,))
        for k in range(GRAD_TILE):
            acc[k] = 0
        for n in range(N):
            for y in range(OH):
                for x0 in range(0, OWp, TILE_PIXELS):
                    for o in range(GRAD_CHANNELS):
                        g = gp[n, min(block * GRAD_CHANNELS + o, O - 1), y]  # a short last block repeats
                        for i in range(GRAD_TAPS):
                            row = xp[n, c, y + i * dh]
                            for j in range(GRAD_TAPS):
                                start = x0 + j * dw
                                for p in range(TILE_PIXELS):
                                    acc[((o * GRAD_TAPS + i) * GRAD_TAPS + j) * TILE_PIXELS + p] += \
                                        g[np.uint64(x0 + p)] * row[np.uint64(start + p)]
        for o in range(min(GRAD_CHANNELS, O - block * GRAD_CHANNELS)):
            for i in range(GRAD_TAPS):
                for j in range(GRAD_TAPS):
                    total = acc[((o * GRAD_TAPS + i) * GRAD_TAPS + j) * TILE_PIXELS]
                    for p in range(1, TILE_PIXELS):
                        total += acc[((o * GRAD_TAPS + i) * GRAD_TAPS + j) * TILE_PIXELS + p]
                    out[block * GRAD_CHANNELS + o, c, i, j] = total


@njit(parallel=True, cache=True)
def _place(x, top, left, out):
    """out[n, c] = zeros with x[n, c] at row ``top``, column ``left``: one pass, one (n, c) plane per task."""
    N, C, H, W = x.shape
    Wp = out.shape[3]
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        for r in range(out.shape[2]):
            h = r - top
            if h < 0 or h >= H:
                for col in range(Wp):
                    out[n, c, r, col] = 0
                continue
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


def _padded_input(x, padding, out_width, kernel_width, dilation):
    """x zero-padded, and wide enough that the last tile of every row reads inside the array."""
    N, C, H, W = x.shape
    (ph, pw), width = padding, -(-out_width // TILE_PIXELS) * TILE_PIXELS + dilation * (kernel_width - 1)
    return _placed(x, (N, C, H + 2 * ph, max(width, W + 2 * pw)), ph, pw)


def _pack(w):
    """(O, C, kh, kw) -> (blocks, C, kh, kw, 8): each tile's 8 output channels side by side (zeros pad the last)."""
    O = w.shape[0]
    blocks = -(-O // TILE_CHANNELS)
    packed = np.zeros((blocks * TILE_CHANNELS,) + w.shape[1:], dtype=w.dtype)
    packed[:O] = w
    return np.ascontiguousarray(packed.reshape((blocks, TILE_CHANNELS) + w.shape[1:]).transpose(0, 2, 3, 4, 1))


def conv2d(x, w, padding, dilation):
    """Stride-1 convolution, y[n, o] = sum_{c,i,j} w[o, c, i, j] x[n, c, oh - p + i*d, ow - p + j*d]."""
    dtype = np.result_type(x.dtype, w.dtype)
    (kh, kw), (dh, dw) = w.shape[2:], dilation
    OH = x.shape[2] + 2 * padding[0] - dh * (kh - 1)
    OW = x.shape[3] + 2 * padding[1] - dw * (kw - 1)
    xp = _padded_input(x.astype(dtype, copy=False), padding, OW, kw, dw)
    out = np.empty((x.shape[0], w.shape[0], OH, OW), dtype=dtype)
    with straight_line_vectorizer():
        _forward(xp, _pack(w.astype(dtype, copy=False)), dh, dw, out)
    return out


def conv2d_weight_grad(g, x, w_shape, padding, dilation):
    """dw[o, c, i, j] = sum_{n,y,x} g[n, o, y, x] x[n, c, y - p + i*d, x - p + j*d], for 3x3 kernels."""
    dtype = np.result_type(x.dtype, g.dtype)
    N, O, OH, OW = g.shape
    xp = _padded_input(x.astype(dtype, copy=False), padding, OW, 3, dilation[1])
    gp = _placed(g.astype(dtype, copy=False), (N, O, OH, -(-OW // TILE_PIXELS) * TILE_PIXELS))  # tail lanes add 0
    out = np.empty(w_shape, dtype=dtype)
    with straight_line_vectorizer():
        _weight_grad_3x3(xp, gp, dilation[0], dilation[1], out)
    return out
