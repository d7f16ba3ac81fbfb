"""Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray, 2016): a 3x3 convolution with 2.25x fewer
multiplications, for the wide layers where the products dominate.

A 2x2 block of outputs of a 3x3 convolution reads a 4x4 block d of the input. In the transformed
domain the 36 multiplications of the direct sum become 16 elementwise ones:

    Y = A^T [ (G g G^T) * (B^T d B) ] A          (* elementwise; all 4x4 but Y 2x2 and g 3x3)

        B^T = | 1  0 -1  0 |     G = |  1    0    0  |     A^T = | 1  1  1  0 |
              | 0  1  1  0 |         | 1/2  1/2  1/2 |           | 0  1 -1 -1 |
              | 0 -1  1  0 |         | 1/2 -1/2  1/2 |
              | 0  1  0 -1 |         |  0    0    1  |

Summed over input channels, each of the 16 positions (a, b) of the transformed block is one matrix
product over all tiles at once:

    M_ab = U_ab @ V_ab,   U_ab[o, c] = (G w[o, c] G^T)_ab  (Cout x Cin),   V_ab[c, t] = (B^T d_ct B)_ab  (Cin x tiles)

So the convolution is a transform of the input (4x its size: 16 values per 4 output pixels), 16 BLAS
products of Cin-deep sums, and a transform back. The products cost 16/36 of the direct convolution's
multiply-adds; the transforms are passes over memory, so the route pays on layers wide enough for the
products to dominate (here: the full-width net), and autotune measures where. The transforms only add
and subtract (G's halves are exact in binary), so the result differs from the direct sum by rounding
alone, a few units in the last place of the largest term. Stride 1, dilation 1, 3x3 kernels, any padding.

The weight gradient is the same map transposed. Per block, Y is linear in g: Y = A^T [(G g G^T) * V] A,
so dL/dg = G^T [V * (A dY A^T)] G, and summed over blocks

    dW[o, c] = G^T S[o, c] G,    S_ab = Z_ab @ V_ab^T,    Z_ab[o, t] = (A dY_ot A^T)_ab  (Cout x tiles)

16 products whose inner dimension is the tiles (hundreds per piece, summed over the pieces), between
the input's transform and the output gradient's, A dY A^T with A = (A^T)^T, 4 x 2.
"""

import numpy as np
from numba import njit, prange

from .gemm import matmul
from .numba_tiled import _placed

G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])


def applies(geo):
    """Whether this route can compute the convolution: 3x3, stride 1, dilation 1."""
    return geo.kernel == (3, 3) and geo.stride == (1, 1) and geo.dilation == (1, 1)


WIDE, LARGE = 128, 224 * 224  # channels in and out from which the route is worth measuring; 64 on large maps


def worth(in_channels, out_channels, pixels):
    """Whether to try this route on a layer whose output has ``pixels`` per image: the transforms cost
    (Cin + Cout) passes per block where the products save ~ Cin Cout multiply-adds, so narrow layers lose,
    unless their maps are large enough that the direct routes leave the cache. Measured with 2 threads on a
    Zen 4, forward: 1.5-1.6x faster than the best other route at 128-512 channels (112^2 ... 28^2); at 64, as
    fast as the tiles at 224^2, faster on the full net's 700 x 575 (its forward 15-20 % faster), 0.8x on the
    small net's 41^2, 0.5x at 32 channels. (Trying it where it loses would also cost a first run seconds of
    compiling.)"""
    narrow = min(in_channels, out_channels)
    return narrow >= WIDE or narrow >= WIDE // 2 and pixels >= LARGE


GG = np.kron(G, G)  # (G (x) G)[4a + b, 3i + j] = G_ai G_bj


def transform_weights(w):
    """U[4a + b, o, c] = (G w[o, c] G^T)_ab = sum_ij G_ai G_bj w[o, c, i, j]: one product with G (x) G,
    (16 x 9) @ (9 x Cout Cin). Its entries are 0, +-1/4, +-1/2 and 1, exact in binary."""
    O, C = w.shape[:2]
    return matmul(GG.astype(w.dtype), w.reshape(O * C, 9).T).reshape(16, O, C)


@njit(inline="always")
def _columns(d0, d1, d2, d3):
    """B^T applied to one column (d0..d3) of a block; the same combinations of B^T's rows serve (.) B."""
    return d0 - d2, d1 + d2, d2 - d1, d1 - d3


@njit(cache=True)
def _input_row(x0, x1, x2, x3, t, v, c, base, TW):
    """One row of blocks of one channel: its four input rows x0..x3 -> v[:, c, base : base + TW] (t: scratch)."""
    for j in range(x0.shape[0]):
        t[0, j], t[1, j], t[2, j], t[3, j] = _columns(x0[j], x1[j], x2[j], x3[j])
    for a in range(4):
        ta = t[a]
        for tx in range(TW):
            q = np.uint64(2 * tx)  # unsigned: no negative-index test, so the loop vectorises
            p = np.uint64(base + tx)
            v[4 * a, c, p], v[4 * a + 1, c, p], v[4 * a + 2, c, p], v[4 * a + 3, c, p] = _columns(
                ta[q], ta[q + 1], ta[q + 2], ta[q + 3])


@njit(cache=True)
def _output_row(c0, c1, c2, c3, out):
    """A row of outputs from the row combinations c_b of its tiles: (A^T M) A along the row.
    (A function of its own: inlined into the parallel loop, its odd-width column was not written.)"""
    OW = out.shape[0]
    for tx in range(OW // 2):
        q = np.uint64(2 * tx)
        out[q] = c0[tx] + c1[tx] + c2[tx]
        out[q + 1] = c1[tx] - c2[tx] - c3[tx]
    if OW % 2:  # an odd width: the last tile's left column only
        last = OW // 2
        out[OW - 1] = c0[last] + c1[last] + c2[last]


@njit(cache=True)
def _output_rows(m, o, base, s, y_top, y_bottom, rows):
    """One row of blocks of one output channel: m[:, o, base : base + TW] -> ``rows`` (1 or 2) output rows."""
    TW = s.shape[1]
    for b in range(4):  # A^T M: rows 0 + 1 + 2 and 1 - 2 - 3 of each column b, for the whole row of blocks
        for tx in range(TW):
            p = np.uint64(base + tx)
            m1, m2 = m[4 + b, o, p], m[8 + b, o, p]
            s[b, tx] = m[b, o, p] + m1 + m2
            s[4 + b, tx] = m1 - m2 - m[12 + b, o, p]
    _output_row(s[0], s[1], s[2], s[3], y_top)
    if rows == 2:
        _output_row(s[4], s[5], s[6], s[7], y_bottom)


@njit(cache=True)
def _grad_row(e0, e1, t, z, o, base, TW):
    """One row of blocks of one output channel's gradient: its rows e0, e1 -> z[:, o, base : base + TW]."""
    for j in range(e0.shape[0]):
        t[0, j], t[1, j], t[2, j], t[3, j] = e0[j], e0[j] + e1[j], e0[j] - e1[j], -e1[j]
    for a in range(4):
        ta = t[a]
        for tx in range(TW):
            q, p = np.uint64(2 * tx), np.uint64(base + tx)
            left, right = ta[q], ta[q + 1]
            z[4 * a, o, p], z[4 * a + 1, o, p], z[4 * a + 2, o, p], z[4 * a + 3, o, p] = (
                left, left + right, left - right, -right)


INPUT, GRADIENT, OUTPUT = 0, 1, 2  # what _transform does


@njit(cache=True)
def _channel(planes, blocks, TH, TW, r0, r1, what, c):
    """_transform's work on channel c (a function of its own: the parallel loop then compiles in a fraction
    of the time)."""
    H, W = planes.shape[2], planes.shape[3]
    scratch = np.empty((8, max(W, TW)), planes.dtype)
    for R in range(r0, r1):
        n, top, base = R // TH, 2 * (R % TH), (R - r0) * TW
        if what == INPUT:
            _input_row(planes[n, c, top], planes[n, c, top + 1], planes[n, c, top + 2], planes[n, c, top + 3],
                       scratch, blocks, c, base, TW)
        elif what == GRADIENT:
            _grad_row(planes[n, c, top], planes[n, c, top + 1], scratch, blocks, c, base, TW)
        else:
            _output_rows(blocks, c, base, scratch[:, :TW], planes[n, c, top], planes[n, c, min(top + 1, H - 1)],
                         min(2, H - top))


@njit(parallel=True, cache=True)
def _transform(planes, blocks, TH, TW, r0, r1, what):
    """Between image planes (N, C, H, W) and transformed blocks (16, C, tiles), for the rows of blocks
    R = n TH + ty in r0 .. r1 - 1 (block (ty, tx) at column (R - r0) TW + tx), one channel per task:

        INPUT      blocks <- B^T d B    d: the 4x4 block of the padded input at (2 ty, 2 tx)
        GRADIENT   blocks <- A e A^T    e: the 2x2 block of the padded output gradient at (2 ty, 2 tx)
        OUTPUT     planes <- A^T M A    M: the 4x4 block of products; cut at the output's edges

    Each row of blocks takes two passes over contiguous memory: first the combinations of rows, for
    the whole row at once, then those of columns. (One parallel kernel for the three, since each costs
    seconds to compile.)"""
    for c in prange(planes.shape[1]):
        _channel(planes, blocks, TH, TW, r0, r1, what, c)


PIECE_TILES = 256  # blocks per piece: its transformed input and products stay in cache until read back,
# and BLAS still gets 256 columns. Measured on one thread of a Zen 4 (pieces of 64-1024 blocks, layers of
# 32-512 channels): smaller pieces starve the 512-channel products, larger ones the cache.


def rows_per_piece(TW, tiles=PIECE_TILES):
    """Rows of blocks per piece: about ``tiles`` blocks, and at least one row."""
    return max(1, -(-tiles // TW))


def conv2d(x, w, padding, tiles=PIECE_TILES):
    """y = conv2d(x, w) at stride 1 for 3x3 kernels, by F(2x2, 3x3): transform, 16 products, transform back,
    a piece of about ``tiles`` blocks at a time."""
    dtype = np.result_type(x.dtype, w.dtype)
    N, C, H, W = x.shape
    (ph, pw), O = padding, w.shape[0]
    OH, OW = H + 2 * ph - 2, W + 2 * pw - 2
    TH, TW = -(-OH // 2), -(-OW // 2)
    xp = _placed(x.astype(dtype, copy=False), (N, C, 2 * TH + 2, 2 * TW + 2), ph, pw)  # whole blocks
    u = transform_weights(w.astype(dtype, copy=False))
    y = np.empty((N, O, OH, OW), dtype)
    step = rows_per_piece(TW, tiles)
    for r0 in range(0, N * TH, step):
        r1 = min(r0 + step, N * TH)
        v = np.empty((16, C, (r1 - r0) * TW), dtype)
        _transform(xp, v, TH, TW, r0, r1, INPUT)
        _transform(y, matmul(u, v), TH, TW, r0, r1, OUTPUT)
    return y


def conv2d_weight_grad(g, x, w_shape, padding, tiles=PIECE_TILES):
    """dw[o, c, i, j] = sum_{n,y,x} g[n, o, y, x] x[n, c, y - p + i, x - p + j] for 3x3 kernels, by F(2x2, 3x3)
    transposed: S = sum over pieces of Z V^T in the transformed domain, then dW = G^T S G."""
    dtype = np.result_type(x.dtype, g.dtype)
    N, C, H, W = x.shape
    O, OH, OW = g.shape[1:]
    TH, TW = -(-OH // 2), -(-OW // 2)
    xp = _placed(x.astype(dtype, copy=False), (N, C, 2 * TH + 2, 2 * TW + 2), *padding)
    gp = _placed(g.astype(dtype, copy=False), (N, O, 2 * TH, 2 * TW))  # odd edges: zeros add nothing
    s = np.zeros((16, O, C), dtype)
    step = rows_per_piece(TW, tiles)
    for r0 in range(0, N * TH, step):
        r1 = min(r0 + step, N * TH)
        v = np.empty((16, C, (r1 - r0) * TW), dtype)
        z = np.empty((16, O, (r1 - r0) * TW), dtype)
        _transform(xp, v, TH, TW, r0, r1, INPUT)
        _transform(gp, z, TH, TW, r0, r1, GRADIENT)
        s += matmul(z, v.transpose(0, 2, 1))
    dw = matmul(GG.T.astype(dtype), s.reshape(16, O * C))  # G^T S G: (9 x 16) @ (16 x Cout Cin)
    return np.ascontiguousarray(dw.T).reshape(w_shape)
