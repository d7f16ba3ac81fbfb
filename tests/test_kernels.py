"""Every fast kernel equals the NumPy reference (minifcn.kernels.reference) on hypothesis shapes.

The Numba kernels run everywhere; the CUDA kernels run where CuPy sees a GPU.
"""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from minifcn import backend
from minifcn.functional import pool_output_size
from minifcn.kernels import OPS, reference
from strategies import conv_geometry, naive_conv2d, random_arrays

from minifcn import ConvMatrix

numba_cpu = pytest.importorskip("minifcn.kernels.numba_cpu", reason="numba is not installed")


def _cuda():
    if not backend.available("cupy"):
        pytest.skip("needs a CUDA GPU and CuPy (the gpu extra); none is present here")
    from minifcn.kernels import cuda
    return cuda


def _host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


KERNELS = [pytest.param(lambda: numba_cpu, lambda a: a, id="numba"),
           pytest.param(_cuda, lambda a: __import__("cupy").asarray(a), id="cuda", marks=pytest.mark.gpu)]
DTYPES = [np.float32, np.float64]


def close(a, b, dtype):
    """Equal to rounding. A float32 sum of many terms is off by about eps times its terms, not its result
    (cancellation), so the absolute tolerance scales with the largest finite value of the reference."""
    tol = 1e-5 if dtype == np.float32 else 1e-12
    b = _host(b)
    finite = np.abs(b[np.isfinite(b)])
    np.testing.assert_allclose(_host(a), b, rtol=tol, atol=tol * max(1.0, finite.max() if finite.size else 1.0))


def test_every_backend_module_names_every_op():
    assert all(callable(getattr(numba_cpu, op)) for op in OPS)
    assert all(callable(getattr(reference, op)) for op in OPS)


@pytest.mark.parametrize("module, to_device", KERNELS)
@pytest.mark.parametrize("dtype", DTYPES)
@given(g=conv_geometry())
def test_im2col_and_col2im_match_reference(module, to_device, dtype, g):
    kernels = module()
    _, x, w, _ = random_arrays(g, dtype)
    args = (w.shape[2:], g["stride"], g["padding"], g["dilation"])
    cols = reference.im2col(x, *args)
    close(kernels.im2col(to_device(x), *args), cols, dtype)
    c = np.random.default_rng(g["seed"]).standard_normal(cols.shape).astype(dtype)
    close(kernels.col2im(to_device(c), x.shape, *args), reference.col2im(c, x.shape, *args), dtype)


@given(g=conv_geometry(max_size=6))
def test_reference_convolution_is_the_textbook_definition(g):
    """conv2d against the naive loop; its input gradient against the dense matrix's transpose; its weight
    gradient against the definition dL/dw[o,c,i,j] = <conv2d(x, e_ocij), g> (conv2d is linear in w)."""
    rng, x, w, _ = random_arrays(g)
    args = (g["stride"], g["padding"], g["dilation"])
    y = reference.conv2d(x, w, *args)
    np.testing.assert_allclose(y, naive_conv2d(x, w, np.zeros(w.shape[0]), *args), atol=1e-10)
    gy = rng.standard_normal(y.shape)
    dense = ConvMatrix(w, x.shape[1:], *args).toarray()
    want_dx = np.stack([dense.T @ gy[n].ravel() for n in range(x.shape[0])]).reshape(x.shape)
    np.testing.assert_allclose(reference.conv2d_input_grad(gy, w, x.shape, *args), want_dx, atol=1e-10)
    want_dw = np.zeros(w.shape)
    for k in np.ndindex(w.shape):
        e = np.zeros(w.shape)
        e[k] = 1
        want_dw[k] = (naive_conv2d(x, e, np.zeros(w.shape[0]), *args) * gy).sum()
    np.testing.assert_allclose(reference.conv2d_weight_grad(gy, x, w.shape, *args), want_dw, atol=1e-10)


ROUTES = [pytest.param(lambda: numba_cpu, lambda a: a, None, id="numba-auto"),
          pytest.param(lambda: numba_cpu, lambda a: a, "tiled", id="numba-tiled"),
          pytest.param(lambda: numba_cpu, lambda a: a, "shifted", id="numba-shifted"),
          pytest.param(lambda: numba_cpu, lambda a: a, "winograd", id="numba-winograd"),
          pytest.param(lambda: numba_cpu, lambda a: a, "im2col", id="numba-im2col"),
          pytest.param(_cuda, lambda a: __import__("cupy").asarray(a), None, id="cuda", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("module, to_device, route", ROUTES)
@pytest.mark.parametrize("dtype", DTYPES)
@given(g=conv_geometry(max_size=20), cin=st.sampled_from([None, 9, 24]), cout=st.sampled_from([None, 8, 20]),
       square=st.booleans())
def test_convolution_ops_match_reference(module, to_device, route, dtype, g, cin, cout, square):
    """Every route a backend may choose (by channels, stride, dilation, padding) equals the textbook.

    ``route`` forces Numba's register tiles, shifted GEMM or Winograd (at stride 1; a stride above 1 goes
    through the sub-pixel phases to them; Winograd takes undilated 3x3 kernels, the input gradient as a
    forward pass, shifted GEMM the rest), or im2col + GEMM everywhere.
    ``square`` makes the kernel 3x3, the only size the tiled weight gradient takes.
    """
    kernels = module()
    numba_cpu.ROUTE = route
    try:
        check_convolution_ops(kernels, to_device, dtype, g, cin, cout, square)
    finally:
        numba_cpu.ROUTE = None


@pytest.mark.parametrize("pixels", [8, 16])
@pytest.mark.parametrize("dtype", DTYPES)
@given(g=conv_geometry(max_size=40), cin=st.sampled_from([None, 9, 24]), cout=st.sampled_from([None, 8, 20]),
       rows=st.sampled_from([1, 2]))
def test_every_tile_variant_matches_reference(pixels, dtype, g, cin, cout, rows):
    """The register tiles at each width (AVX2's 8 float32 lanes, AVX-512's 16), one or two rows tall, every
    forward tile shape (FORWARD_TILES), and the 3x3 weight gradient, against the textbook; whichever width
    this CPU compiles by default."""
    from minifcn.kernels import numba_tiled
    g = dict(shaped(g, cin, cout, True), stride=(1, 1))
    rng, x, w, _ = random_arrays(g, dtype)
    padding, dilation = g["padding"], g["dilation"]
    y = reference.conv2d(x, w, 1, padding, dilation)
    close(numba_tiled.conv2d(x, w, padding, dilation, rows=rows, pixels=pixels), y, dtype)
    for channels, rows, vectors in numba_tiled.FORWARD_TILES.values():  # and the tiles of other shapes
        close(numba_tiled.conv2d(x, w, padding, dilation, rows, pixels, channels, vectors), y, dtype)
    gy = rng.standard_normal(y.shape).astype(dtype)
    close(numba_tiled.conv2d_weight_grad(gy, x, w.shape, padding, dilation, pixels=pixels),
          reference.conv2d_weight_grad(gy, x, w.shape, 1, padding, dilation), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@given(g=conv_geometry(max_size=12), batch=st.integers(1, 20), cin=st.sampled_from([None, 9]),
       cout=st.sampled_from([None, 8, 20]))
def test_tiles_over_images_side_by_side_match_reference(dtype, g, batch, cin, cout):
    """Every forward tile shape and the 3x3 weight gradient over a batch laid side by side in zero-padded
    cells (side_by_side), against the textbook: no image may read its neighbour's pixels, whatever the
    padding, dilation, map size and a last row of cells left part empty."""
    from minifcn.kernels import numba_tiled, side_by_side
    g = shaped(dict(g, stride=(1, 1)), cin, cout, True)
    g = dict(g, x_shape=(batch,) + g["x_shape"][1:])
    rng, x, w, _ = random_arrays(g, dtype)
    padding, dilation = g["padding"], g["dilation"]
    y = reference.conv2d(x, w, 1, padding, dilation)
    for channels, rows, vectors in numba_tiled.FORWARD_TILES.values():
        close(side_by_side.conv2d(x, w, padding, dilation, rows, channels, vectors), y, dtype)
    gy = rng.standard_normal(y.shape).astype(dtype)
    close(side_by_side.conv2d_weight_grad(gy, x, w.shape, padding, dilation),
          reference.conv2d_weight_grad(gy, x, w.shape, 1, padding, dilation), dtype)


def test_small_maps_are_laid_side_by_side_where_that_saves_lanes():
    """The count of images per row of cells wastes the fewest lanes (8 x 8 maps, pad 1, 16 lanes: 5 cells
    of 10 pixels make 48 output columns, 3 whole tiles), and the route is offered only where it saves a
    quarter of the lanes: 4 x 4 and 8 x 8 maps, not 16-pixel rows or a batch of one; with this CPU's tile
    width, autotune measures it exactly there."""
    from minifcn.conv_arithmetic import conv_geometry as geometry
    from minifcn.kernels import numba_tiled, side_by_side
    assert side_by_side.sides(64, 8, 1, 3, 1, 16) == 5
    lanes = {k: -(-64 // k) * (-(-(10 * k - 2) // 16) * 16) for k in range(1, 17)}
    assert lanes[5] == min(lanes.values())
    for size, batch, offered in [(4, 64, True), (8, 64, True), (16, 64, False), (32, 8, False), (8, 1, False)]:
        geo = geometry((batch, 8, size, size), (3, 3), 1, 1, 1)
        assert side_by_side.worth((batch, 8, size, size), geo, 16) == offered, (size, batch)
        here = side_by_side.worth((batch, 8, size, size), geo, numba_tiled.WIDTH)
        ways = numba_cpu.candidates("conv2d", (batch, 8, size, size), geo, (8, 8, 3, 3), 4)
        assert here == any(way.startswith("side") for way in ways)
        assert side_by_side.worth((batch, 8, size, size), geo, numba_tiled.GRAD_WIDTH) == (
            "side" in numba_cpu.candidates("conv2d_weight_grad", (batch, 8, size, size), geo, (8, 8, 3, 3), 4))


@pytest.mark.parametrize("dtype", DTYPES)
@given(g=conv_geometry(max_size=30), cin=st.sampled_from([None, 9, 24]), cout=st.sampled_from([None, 8, 20]),
       tiles=st.sampled_from([1, 7, 256]))
def test_winograd_matches_reference(dtype, g, cin, cout, tiles):
    """F(2x2, 3x3), forward and weight gradient, on every padding and odd or even map, cut into pieces of
    any number of blocks (one row of blocks, a few, the default), against the textbook; its weight
    transform is G w G^T."""
    from minifcn.kernels import winograd
    g = dict(shaped(g, cin, cout, True), stride=(1, 1), dilation=(1, 1))
    g["x_shape"] = g["x_shape"][:2] + tuple(max(n, 3 - 2 * p) for n, p in zip(g["x_shape"][2:], g["padding"]))
    _, x, w, _ = random_arrays(g, dtype)
    y = reference.conv2d(x, w, 1, g["padding"], 1)
    close(winograd.conv2d(x, w, g["padding"], tiles=tiles), y, dtype)
    gy = np.random.default_rng(g["seed"]).standard_normal(y.shape).astype(dtype)
    close(winograd.conv2d_weight_grad(gy, x, w.shape, g["padding"], tiles=tiles),
          reference.conv2d_weight_grad(gy, x, w.shape, 1, g["padding"], 1), dtype)
    u = winograd.transform_weights(w).reshape(4, 4, *w.shape[:2])
    G = winograd.G
    np.testing.assert_allclose(u[:, :, -1, -1], G @ w[-1, -1].astype(np.float64) @ G.T, rtol=1e-6, atol=1e-6)


def test_winograd_is_tried_on_wide_undilated_3x3_layers_only():
    """A candidate for autotune where its products are deep enough to pay for the transforms (128 channels in
    and out, 64 on maps of 224^2 and more), forward and weight gradient; never on narrow, dilated, strided
    or non-3x3 layers."""
    from minifcn.conv_arithmetic import conv_geometry

    def tried(op, cin, cout, kernel=3, stride=1, dilation=1, size=16):
        geo = conv_geometry((1, cin, size, size), (kernel, kernel), stride, 1, dilation)
        return "winograd" in numba_cpu.candidates(op, (1, cin, size, size), geo, (cout, cin, kernel, kernel), 4)

    assert tried("conv2d", 128, 256) and tried("conv2d_weight_grad", 512, 128)
    assert not tried("conv2d", 64, 128) and not tried("conv2d_weight_grad", 128, 64)
    assert tried("conv2d", 64, 128, size=224) and not tried("conv2d", 32, 32, size=400)  # 64 on large maps
    assert not any(tried("conv2d", 256, 256, **k) for k in ({"kernel": 5}, {"stride": 2}, {"dilation": 2}))
    assert not tried("conv2d_input_grad", 256, 256)  # as a forward pass of the flipped kernel, where it is tried
    # without autotune, the rule takes it forward on wide layers and maps from 28^2
    geo = conv_geometry((1, 256, 28, 28), (3, 3), 1, 1, 1)
    assert numba_cpu.route(geo, 256, 256) == "winograd"
    assert numba_cpu.route(geo, 256, 256, weight_grad=True) != "winograd"
    assert numba_cpu.route(conv_geometry((1, 256, 14, 14), (3, 3), 1, 1, 1), 256, 256) != "winograd"
    assert numba_cpu.route(conv_geometry((1, 64, 56, 56), (3, 3), 1, 1, 1), 64, 64) != "winograd"


def test_forward_tiles_fit_the_register_file():
    """AVX2 (8 lanes, 16 ymm registers) tries only tiles of at most 12 accumulators, leaving registers for the
    input vectors and the broadcast weight; AVX-512 (32 zmm) tiles of at most 16."""
    from minifcn.kernels import numba_tiled
    narrow = numba_tiled.forward_tiles(8)
    assert "tiled2" not in narrow and {"tiled", "tiled6", "tiled4"} <= set(narrow)
    assert all(c * r * v <= 12 for c, r, v in (numba_tiled.FORWARD_TILES[name] for name in narrow))
    wide = numba_tiled.forward_tiles(16)
    assert wide == ["tiled", "tiled2", "tiled16"]
    assert all(c * r * v <= 16 for c, r, v in (numba_tiled.FORWARD_TILES[name] for name in wide))


def shaped(g, cin, cout, square):
    """The drawn geometry with these channel counts (None: as drawn), its kernel 3x3 if ``square``."""
    if square:
        g = dict(g, w_shape=g["w_shape"][:2] + (3, 3), x_shape=g["x_shape"][:2] + tuple(
            max(n, 2 * d + 1 - 2 * p) for n, d, p in zip(g["x_shape"][2:], g["dilation"], g["padding"])))
    return dict(g, x_shape=g["x_shape"][:1] + (cin or g["x_shape"][1],) + g["x_shape"][2:],
                w_shape=(cout or g["w_shape"][0], cin or g["w_shape"][1]) + g["w_shape"][2:])


def check_convolution_ops(kernels, to_device, dtype, g, cin, cout, square):
    g = shaped(g, cin, cout, square)
    rng, x, w, _ = random_arrays(g, dtype)
    args = (g["stride"], g["padding"], g["dilation"])
    y = reference.conv2d(x, w, *args)
    close(kernels.conv2d(to_device(x), to_device(w), *args), y, dtype)
    gy = rng.standard_normal(y.shape).astype(dtype)
    close(kernels.conv2d_input_grad(to_device(gy), to_device(w), x.shape, *args),
          reference.conv2d_input_grad(gy, w, x.shape, *args), dtype)
    close(kernels.conv2d_weight_grad(to_device(gy), to_device(x), w.shape, *args),
          reference.conv2d_weight_grad(gy, x, w.shape, *args), dtype)


@given(shape=st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 9),
                      st.integers(1, 40) | st.integers(150, 200)),
       top=st.integers(0, 3), left=st.integers(0, 3), extra=st.tuples(st.integers(0, 3), st.integers(0, 20)),
       strided=st.booleans(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
def test_the_tiles_zero_padded_copy_is_numpys_pad(shape, top, left, extra, strided, dtype, seed):
    """_placed (the tiles' padded input, Winograd's whole blocks): x at (top, left) in a larger array of zeros,
    every border width, a view of every other column as well as a contiguous array, rows shorter and longer
    than LONG_ROW (element loops, slices)."""
    from minifcn.kernels import numba_tiled
    x = np.random.default_rng(seed).standard_normal(shape).astype(dtype) + 1  # no zeros to hide a miss
    x = x[..., ::2] if strided else x
    N, C, H, W = x.shape
    out_shape = (N, C, H + top + extra[0], W + left + extra[1])
    want = np.pad(x, ((0, 0), (0, 0), (top, extra[0]), (left, extra[1])))
    np.testing.assert_array_equal(numba_tiled._placed(x, out_shape, top, left), want)


@given(g=conv_geometry(max_size=20), dtype=st.sampled_from(DTYPES))
def test_numba_phase_kernels_match_the_reshapes_of_subpixel(g, dtype):
    """to_phases / from_phases, one pass each, against subpixel's space_to_depth / depth_to_space (reshapes)."""
    from minifcn.conv_arithmetic import conv_geometry as geometry
    from minifcn.kernels import subpixel
    geo = geometry(g["x_shape"], g["w_shape"][2:], g["stride"], g["padding"], 1)
    if not subpixel.applies(geo):
        return
    rng = np.random.default_rng(g["seed"])
    x = rng.standard_normal(g["x_shape"]).astype(dtype)
    np.testing.assert_array_equal(numba_cpu.to_phases(x, geo), subpixel.space_to_depth(x, geo))
    phases = rng.standard_normal(subpixel.phase_shape(geo, x.shape)).astype(dtype)
    np.testing.assert_array_equal(numba_cpu.from_phases(phases, geo, x.shape),
                                  subpixel.depth_to_space(phases, geo, x.shape))

@pytest.mark.parametrize("route", [None, "tiled", "shifted", "im2col"])
@given(g=conv_geometry(max_size=20), cin=st.sampled_from([None, 9, 24]), cout=st.sampled_from([None, 8, 20]),
       square=st.booleans())
def test_unfolds_says_which_conv_ops_make_im2col_columns(route, g, cin, cout, square):
    """minifcn.workspace runs an op whole when the backend says it makes no columns: that must never be
    false. At stride 1 the routes are direct, and the answer must be exact both ways (a needless "yes"
    would cut the tiles' work into pieces)."""
    g = shaped(g, cin, cout, square)
    rng, x, w, _ = random_arrays(g, np.float32)
    args = (g["stride"], g["padding"], g["dilation"])
    gy = rng.standard_normal(reference.conv2d(x, w, *args).shape).astype(np.float32)
    made = []
    real_im2col, real_col2im = numba_cpu.im2col, numba_cpu.col2im
    numba_cpu.im2col = lambda *a, **k: made.append("im2col") or real_im2col(*a, **k)
    numba_cpu.col2im = lambda *a, **k: made.append("col2im") or real_col2im(*a, **k)
    numba_cpu.ROUTE = route
    try:
        for op, call in [("conv2d", lambda: numba_cpu.conv2d(x, w, *args)),
                         ("conv2d_input_grad", lambda: numba_cpu.conv2d_input_grad(gy, w, x.shape, *args)),
                         ("conv2d_weight_grad", lambda: numba_cpu.conv2d_weight_grad(gy, x, w.shape, *args))]:
            made.clear()
            call()
            said = numba_cpu.unfolds(op, x.shape, w.shape, *args)
            assert said or not made, f"{op}: said no columns, made {made}"
            if g["stride"] == (1, 1):
                assert said == bool(made), f"{op}: said {said}, made {made}"
    finally:
        numba_cpu.im2col, numba_cpu.col2im, numba_cpu.ROUTE = real_im2col, real_col2im, None


def test_the_small_nets_thin_layers_run_whole_under_any_workspace_limit():
    """The tiles read the padded input in place: a 3x3 8->8 layer on a 326-pixel map makes no columns."""
    for op in ("conv2d", "conv2d_input_grad", "conv2d_weight_grad"):
        assert not numba_cpu.unfolds(op, (8, 8, 326, 326), (8, 8, 3, 3), 1, 1, 1), op
    assert numba_cpu.unfolds("conv2d", (8, 8, 326, 326), (8, 8, 3, 3), 2, 1, 1)  # strided: counted as unfolding
    assert reference.unfolds("conv2d", (8, 8, 326, 326), (8, 8, 3, 3), 1, 1, 1)


@st.composite
def pool_geometry(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    H, W = draw(st.integers(max(1, kh - 2 * ph), 9)), draw(st.integers(max(1, kw - 2 * pw), 9))
    ceil = draw(st.booleans())
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), H, W)
    out = (pool_output_size(H, kh, sh, ph, ceil), pool_output_size(W, kw, sw, pw, ceil))
    # small integers make ties (the first maximum must win in both); "specials" adds infinities and NaNs
    # (a NaN wins over numbers, the first NaN over later ones, and a window of -inf still has an arg-max)
    values = draw(st.sampled_from(["normal", "ties", "specials"]))
    return shape, (kh, kw), (sh, sw), (ph, pw), out, values, draw(st.integers(0, 2**16))


@pytest.mark.parametrize("dtype", DTYPES)
@given(H=st.integers(1, 9), W=st.integers(1, 9), ceil=st.booleans(),
       values=st.sampled_from(["normal", "ties", "specials"]), seed=st.integers(0, 2**16))
def test_vggs_2x2_pool_has_its_own_kernel_that_matches_the_reference(dtype, H, W, ceil, values, seed):
    """Numba's 2x2 stride-2 pool, and the backward on its arg-maxes (odd sides leave windows of one or two
    taps in ceil mode, and inputs no window covers in floor mode)."""
    assume(ceil or min(H, W) >= 2)  # floor mode needs a whole window
    shape, out = (2, 3, H, W), (pool_output_size(H, 2, 2, 0, ceil), pool_output_size(W, 2, 2, 0, ceil))
    rng = np.random.default_rng(seed)
    x = {"normal": lambda: rng.standard_normal(shape), "ties": lambda: rng.integers(-2, 3, shape),
         "specials": lambda: rng.choice([-np.inf, -1.0, 0.0, 1.0, np.inf, np.nan], shape)}[values]().astype(dtype)
    y, arg = reference.max_pool(x, (2, 2), (2, 2), (0, 0), out)
    y2, arg2 = numba_cpu.max_pool(x, (2, 2), (2, 2), (0, 0), out)
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(arg2, arg)
    g = rng.standard_normal(y.shape).astype(dtype)
    np.testing.assert_array_equal(numba_cpu.max_pool_backward(g, arg, shape, (2, 2), (2, 2), (0, 0)),
                                  reference.max_pool_backward(g, arg, shape, (2, 2), (2, 2), (0, 0)))


@pytest.mark.parametrize("module, to_device", KERNELS)
@pytest.mark.parametrize("dtype", DTYPES)
@given(p=pool_geometry())
def test_max_pool_forward_and_backward_match_reference(module, to_device, dtype, p):
    kernels = module()
    shape, kernel, stride, padding, out, values, seed = p
    rng = np.random.default_rng(seed)
    x = {"normal": lambda: rng.standard_normal(shape), "ties": lambda: rng.integers(-2, 3, shape),
         "specials": lambda: rng.choice([-np.inf, -1.0, 0.0, 1.0, np.inf, np.nan], shape)}[values]().astype(dtype)
    y, arg = reference.max_pool(x, kernel, stride, padding, out)
    y2, arg2 = kernels.max_pool(to_device(x), kernel, stride, padding, out)
    close(y2, y, dtype)
    np.testing.assert_array_equal(_host(arg2), arg)
    g = rng.standard_normal(y.shape).astype(dtype)
    close(kernels.max_pool_backward(to_device(g), to_device(arg), shape, kernel, stride, padding),
          reference.max_pool_backward(g, arg, shape, kernel, stride, padding), dtype)


@pytest.mark.parametrize("module, to_device", KERNELS)
@pytest.mark.parametrize("dtype", DTYPES)
@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=4), seed=st.integers(0, 2**16))
def test_relu_matches_reference(module, to_device, dtype, shape, seed):
    kernels = module()
    rng = np.random.default_rng(seed)
    x, g = rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape).astype(dtype)
    y = kernels.relu(to_device(x))
    close(y, reference.relu(x), dtype)
    close(kernels.relu_backward(to_device(g), y), reference.relu_backward(g, reference.relu(x)), dtype)


@pytest.mark.parametrize("module, to_device", KERNELS)
@pytest.mark.parametrize("dtype", DTYPES)
@given(N=st.integers(1, 3), K=st.integers(1, 7), P=st.integers(1, 20) | st.sampled_from([512, 513, 1100]),
       seed=st.integers(0, 2**16), weighted=st.booleans(), scale=st.floats(0.01, 10))
def test_softmax_cross_entropy_matches_reference(module, to_device, dtype, N, K, P, seed, weighted, scale):
    """P above 512 spans several of the Numba kernels' pixel blocks, the last one partial."""
    kernels = module()
    rng = np.random.default_rng(seed)
    z = (5 * rng.standard_normal((N, K, P))).astype(dtype)
    t = rng.integers(0, K, (N, P))
    t[rng.random((N, P)) < 0.3] = 255  # ignored pixels
    w = rng.uniform(0.1, 2, K).astype(dtype) if weighted else np.ones(K, dtype)
    total, denom = kernels.softmax_xent(to_device(z), to_device(t), to_device(w), 255)
    ref_total, ref_denom = reference.softmax_xent(z, t, w, 255)
    close(np.float64(total), ref_total, dtype)
    close(np.float64(denom), ref_denom, dtype)
    close(kernels.softmax_xent_backward(to_device(z), to_device(t), to_device(w), 255, scale),
          reference.softmax_xent_backward(z, t, w, 255, scale), dtype)


@pytest.mark.parametrize("module, to_device", KERNELS)
@pytest.mark.parametrize("dtype", DTYPES)
@given(N=st.integers(1, 3), K=st.integers(1, 9), P=st.integers(1, 20) | st.sampled_from([512, 513, 1100]),
       seed=st.integers(0, 2**16), nans=st.sampled_from([0.0, 0.05, 0.5]))
def test_argmax_classes_is_numpys_argmax(module, to_device, dtype, N, K, P, seed, nans):
    """Scores drawn from a few integers, so that ties are common (the first wins), and NaNs in some draws
    (the first NaN wins, as in NumPy); pixel counts across the Numba kernel's blocks."""
    argmax_classes = getattr(module(), "argmax_classes", reference.argmax_classes)  # as the backend falls back
    rng = np.random.default_rng(seed)
    z = rng.integers(-2, 3, (N, K, P)).astype(dtype)
    z[rng.random(z.shape) < nans] = np.nan
    got = _host(argmax_classes(to_device(z)))
    np.testing.assert_array_equal(got, z.argmax(axis=1))
    assert got.shape == (N, P)


@pytest.mark.parametrize("module, to_device", KERNELS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
@given(shape=st.tuples(st.integers(1, 4), st.integers(1, 6), st.integers(1, 7), st.integers(1, 27)),
       seed=st.integers(0, 2 ** 16), offset=st.sampled_from([0.0, 5.0, -300.0]))
def test_batch_norm_ops_match_reference(module, to_device, dtype, training, shape, seed, offset):
    """Statistics, forward and backward against the reference, on shapes down to one value per channel
    and on channels far from zero (where summing squares before subtracting the mean would cancel); planes
    (H x W) smaller and larger than the Numba sums' LANES, whole and with a tail."""
    kernels = module()
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * rng.uniform(0.1, 3) + offset).astype(dtype)
    gamma, beta, g = (rng.standard_normal(s).astype(dtype) for s in (shape[1], shape[1], shape))
    mean, var = reference.batch_norm_stats(x.astype(np.float64))
    got_mean, got_var = kernels.batch_norm_stats(to_device(x))
    close(got_mean, mean.astype(dtype), dtype)
    close(got_var, var.astype(dtype), dtype)
    mean, invstd = mean.astype(dtype), (1 / np.sqrt(var + 1e-5)).astype(dtype)
    y, xhat = reference.batch_norm_forward(x, mean, invstd, gamma, beta)
    for a, b in zip(kernels.batch_norm_forward(*map(to_device, (x, mean, invstd, gamma, beta))), (y, xhat)):
        close(a, b, dtype)
    want = reference.batch_norm_backward(g, xhat, gamma, invstd, training)
    got = kernels.batch_norm_backward(*map(to_device, (g, xhat, gamma, invstd)), training)
    for a, b in zip(got, want):
        assert _host(a).dtype == dtype
        close(a, b, dtype)


def test_the_loss_exponential_matches_numpy_to_a_few_ulp():
    """The polynomial e^x the Numba loss vectorises, over its whole domain (x <= 0) and past its floor."""
    from numba import njit

    @njit
    def apply(x, out):
        for i in range(x.size):
            out[i] = numba_cpu._exp(x[i])
    x = np.concatenate([-np.linspace(0, 708, 700001), -np.random.default_rng(0).random(10000) * 40, [-800.0]])
    out = np.empty_like(x)
    apply(x, out)
    want = np.exp(np.maximum(x, -708.0))
    assert np.max(np.abs(out - want) / want) < 2e-15
    nan = np.empty(1)
    apply(np.array([np.nan]), nan)
    assert np.isnan(nan[0])
