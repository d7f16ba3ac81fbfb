"""Where arrays live: NumPy on the CPU, CuPy on the GPU.

A leaf module: it imports nothing of minifcn, so every other module may
import it without creating a cycle. The backend switch sets the default
module (``set_default_module``); new Tensors are created in it.
"""

import sys

import numpy as np

_default = {"module": np}


def array_module(array):
    """``numpy`` or ``cupy``, whichever owns ``array`` (so one piece of code runs on either)."""
    return sys.modules["cupy"] if type(array).__module__.startswith("cupy") else np


def default_module():
    """The array module new Tensors are created in: numpy, or cupy under the GPU backend."""
    return _default["module"]


def set_default_module(module):
    _default["module"] = module


def as_array(value):
    """An ndarray for ``value``.

    A Tensor gives its data (recognised by its ``requires_grad`` and ``data``,
    since this module cannot import the Tensor class). Arrays, NumPy or CuPy,
    keep their dtype: float64 stays float64. Python numbers and lists become
    arrays, with float64 narrowed to float32, minifcn's working precision.
    """
    if hasattr(value, "requires_grad") and hasattr(value, "data"):
        return value.data
    if isinstance(value, np.ndarray) or array_module(value) is not np:
        return value  # an ndarray, or a CuPy array on the GPU
    if isinstance(value, np.generic):
        return np.asarray(value)
    array = np.asarray(value)
    return array.astype(np.float32) if array.dtype == np.float64 else array


def to_default_module(array):
    """A host array moves to the GPU when the default module is cupy; otherwise it stays where it is."""
    target = default_module()
    return target.asarray(array) if target is not np and array_module(array) is np else array


def to_host(array):
    """A NumPy array of ``array``'s values: CuPy's are copied from the GPU (``.get()``), others pass as they are."""
    return array.get() if hasattr(array, "get") else np.asarray(array)
