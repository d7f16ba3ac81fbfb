"""Kernels: the hot loops of minifcn, once per backend, all with the same signatures.

- ``reference`` -- NumPy (or CuPy) array code that reads like the equations. It is the
  textbook and the oracle every fast kernel is tested against.
- ``numba_cpu`` -- the same loops compiled by Numba, parallel over (image, channel).
- ``cuda`` -- CUDA kernels through CuPy, one thread per output element.

``minifcn.backend`` picks one of them; an op a backend does not provide falls
back to the reference. GEMMs stay in BLAS (numpy.matmul / cuBLAS).

The ops (all arrays, no Tensors):

    im2col(x, kernel_size, stride, padding, dilation) -> cols (N, C*kh*kw, OH*OW)
    col2im(cols, input_shape, kernel_size, stride, padding, dilation) -> (N, C, H, W)
    max_pool(x, kernel, stride, padding, out_hw) -> (y, argmax)   argmax: uint8 offset i*kw + j
    max_pool_backward(g, argmax, x_shape, kernel, stride, padding) -> dx
    relu(x) -> y;  relu_backward(g, y) -> g * (y > 0)
    softmax_xent(z, t, weight, ignore_index) -> (sum of weighted losses, sum of weights)
    softmax_xent_backward(z, t, weight, ignore_index, scale) -> scale * w[t] (softmax(z) - onehot(t))

Loss ops take z of shape (N, K, P) and t of shape (N, P) (int64).

Optional ops, used only where a backend has them (the reference does not: its
convolution is the textbook im2col + GEMM):

    use_direct(in_channels, out_channels, weight_grad=False) -> whether the next two win here
    conv_direct(xp, w) -> y                 stride 1, no dilation, xp already padded
    conv_direct_weight_grad(xp, g, kernel) -> dw
"""

OPS = ("im2col", "col2im", "max_pool", "max_pool_backward", "relu", "relu_backward", "softmax_xent",
       "softmax_xent_backward")
OPTIONAL_OPS = ("use_direct", "conv_direct", "conv_direct_weight_grad")
