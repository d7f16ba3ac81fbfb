"""Check backward() against central finite differences, in float64."""

import numpy as np

from .autograd import Tensor


def gradcheck(fn, *inputs, eps=1e-6, atol=1e-5, rtol=1e-4, seed=0):
    """True if the engine's gradients of ``fn`` match finite differences.

    The scalar checked is L = sum(fn(*inputs) * R) for a fixed random R, so
    every output element takes part. For each input with requires_grad and
    each of its elements, dL/dx_i ~ (L(x + eps e_i) - L(x - eps e_i)) / (2 eps),
    which is accurate to O(eps^2). Inputs are copied to float64 first: in
    float32 the rounding error of L swamps the difference quotient.
    Raises AssertionError naming the input and the worst element otherwise.
    """
    tensors = [Tensor(np.array(t.data, dtype=np.float64) if np.issubdtype(t.dtype, np.floating) else t.data,
                      requires_grad=t.requires_grad) if isinstance(t, Tensor) else t for t in inputs]
    out = fn(*tensors)
    R = np.random.default_rng(seed).standard_normal(out.shape)

    def loss():
        return float((fn(*tensors).data * R).sum())

    (out * R).sum().backward()
    for k, t in enumerate(tensors):
        if not (isinstance(t, Tensor) and t.requires_grad):
            continue
        analytic = np.zeros_like(t.data) if t.grad is None else t.grad
        numeric = np.zeros_like(t.data)
        flat = t.data.reshape(-1)
        for i in range(flat.size):
            saved = flat[i]
            flat[i] = saved + eps
            up = loss()
            flat[i] = saved - eps
            down = loss()
            flat[i] = saved
            numeric.reshape(-1)[i] = (up - down) / (2 * eps)
        if not np.allclose(analytic, numeric, atol=atol, rtol=rtol):
            worst = np.unravel_index(np.abs(analytic - numeric).argmax(), t.shape)
            raise AssertionError(f"gradient of input {k} (shape {t.shape}) differs from finite differences: "
                                 f"at {worst} analytic {analytic[worst]:.6g} vs numeric {numeric[worst]:.6g}")
    return True
