import numpy as np
from hypothesis import given
from strategies import conv_geometry, random_arrays

from minifcn import ConvMatrix
from minifcn.functional import conv2d, conv_transpose2d, conv_transpose_output_size


def matrix_and_vectors(g):
    rng, x, w, _ = random_arrays(g)
    C = ConvMatrix(w, x.shape[1:], g["stride"], g["padding"], g["dilation"])
    y = rng.standard_normal(C.shape[0])
    return C, x[0], w, y


@given(conv_geometry(max_size=6))
def test_dense_matrix_applies_the_convolution(g):
    C, x, w, _ = matrix_and_vectors(g)
    expected = conv2d(x[None], w, None, g["stride"], g["padding"], g["dilation"]).data.ravel()
    np.testing.assert_allclose(C.toarray() @ x.ravel(), expected, atol=1e-10)
    np.testing.assert_allclose(C @ x.ravel(), expected, atol=1e-10)


@given(conv_geometry(max_size=6))
def test_transpose_matrix_is_matrix_transpose(g):
    C, _, _, _ = matrix_and_vectors(g)
    np.testing.assert_array_equal(C.T.toarray(), C.toarray().T)
    assert C.T.shape == C.shape[::-1]
    assert C.T.T == C and C.T != C


@given(conv_geometry(max_size=6))
def test_transpose_operator_is_conv_transpose2d(g):
    C, x, w, y = matrix_and_vectors(g)
    out = C.T @ y
    np.testing.assert_allclose(out, C.toarray().T @ y, atol=1e-10)
    # the same numbers from the functional op, output_padding restoring the rows conv2d's floor dropped
    ymap = y.reshape(C.output_shape)[None]
    extra = tuple(n - conv_transpose_output_size(m, k, s, p, 0, d) for n, m, k, s, p, d in
                  zip(x.shape[1:], ymap.shape[2:], w.shape[2:], g["stride"], g["padding"], g["dilation"]))
    t = conv_transpose2d(ymap, w, None, g["stride"], g["padding"], extra, g["dilation"]).data[0]
    np.testing.assert_allclose(out.reshape(x.shape), t, atol=1e-10)


@given(conv_geometry(max_size=6))
def test_adjoint_identity(g):
    """<C x, y> == <x, C^T y> for every x and y: what makes C^T the adjoint."""
    C, x, _, y = matrix_and_vectors(g)
    assert np.isclose((C @ x.ravel()) @ y, x.ravel() @ (C.T @ y))


def test_matmul_takes_columns():
    rng = np.random.default_rng(1)
    C = ConvMatrix(rng.standard_normal((2, 3, 3, 3)), (3, 5, 4), padding=1)
    X = rng.standard_normal((C.shape[1], 4))
    np.testing.assert_allclose(C @ X, C.toarray() @ X, atol=1e-10)
    np.testing.assert_allclose(C.T @ (C @ X), C.toarray().T @ C.toarray() @ X, atol=1e-10)


def test_figure6_shape():
    """A 3x3 kernel on a 4x4 input: the 4x16 matrix of the review's figure 6."""
    C = ConvMatrix(np.ones((1, 1, 3, 3)), (1, 4, 4))
    assert C.shape == (4, 16) and C.T.shape == (16, 4)
    assert (C.toarray() != 0).sum(axis=1).tolist() == [9, 9, 9, 9]
