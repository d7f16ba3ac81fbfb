"""Kernels: the hot loops of minifcn, once per backend, all with the same signatures.

- ``reference`` -- NumPy (or CuPy) array code that reads like the equations. It is the
  textbook and the oracle every fast kernel is tested against.
- ``numba_cpu`` -- the same loops compiled by Numba, parallel over (image, channel), and the
  convolution by whichever route wins for its shape: the register tiles of ``numba_tiled``,
  one BLAS call per kernel tap (``shifted_gemm``), strided convolutions over their phases
  (``subpixel``), or im2col + BLAS.
- ``cuda`` -- CUDA kernels through CuPy, one thread per output element.

``minifcn.backend`` picks one of them; an op a backend does not provide falls
back to the reference. GEMMs stay in BLAS (numpy.matmul / cuBLAS); Numba's ``matmul`` calls BLAS so that its
own threads never spin beside the Numba kernels (kernels/gemm.py).

The ops (all arrays, no Tensors; stride, padding and dilation are ints or pairs):

    conv2d(x, w, stride, padding, dilation) -> y (N, Cout, OH, OW)       w: (Cout, Cin, kh, kw), no bias
    conv2d_input_grad(g, w, input_shape, stride, padding, dilation) -> dx  (this IS the transposed conv)
    conv2d_weight_grad(g, x, w_shape, stride, padding, dilation) -> dw
    unfolds(op, input_shape, w_shape, stride, padding, dilation) -> whether that conv op makes im2col columns
    im2col(x, kernel_size, stride, padding, dilation) -> cols (N, C*kh*kw, OH*OW)
    col2im(cols, input_shape, kernel_size, stride, padding, dilation) -> (N, C, H, W)
    max_pool(x, kernel, stride, padding, out_hw) -> (y, argmax)   argmax: uint8 offset i*kw + j
    max_pool_backward(g, argmax, x_shape, kernel, stride, padding) -> dx
    relu(x) -> y;  relu_backward(g, y) -> g * (y > 0)
    batch_norm_stats(x) -> (mean, var) per channel;  batch_norm_forward(x, mean, invstd, gamma, beta) -> (y, xhat)
    batch_norm_backward(g, xhat, gamma, invstd, training) -> (dx, dgamma, dbeta)
    softmax_xent(z, t, weight, ignore_index) -> (sum of weighted losses, sum of weights)
    softmax_xent_backward(z, t, weight, ignore_index, scale) -> scale * w[t] (softmax(z) - onehot(t))
    argmax_classes(z) -> (N, P) each pixel's class, argmax over k (NumPy's rule for ties and NaN)
    matmul(a, b) -> a @ b for 2-D or 3-D operands (the fully connected layers, autograd's MatMul)

Loss ops and argmax_classes take z of shape (N, K, P) and t of shape (N, P) (int64). The three
convolution ops may hold a large workspace (im2col columns);
``minifcn.workspace`` calls those that do (``unfolds``) on pieces that fit the workspace limit.
A backend decides inside its own conv ops how to compute them.
"""

OPS = ("conv2d", "conv2d_input_grad", "conv2d_weight_grad", "unfolds", "im2col", "col2im", "max_pool",
       "max_pool_backward", "relu", "relu_backward", "softmax_xent", "softmax_xent_backward", "argmax_classes",
       "batch_norm_stats", "batch_norm_forward", "batch_norm_backward", "matmul")
