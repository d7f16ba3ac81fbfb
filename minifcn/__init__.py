"""minifcn: Fully Convolutional Networks from scratch in NumPy."""

from .autograd import Function, Tensor, no_grad
from .backend import get_backend, set_backend, set_num_threads, set_workspace_limit, workspace_limit
from .conv_matrix import ConvMatrix
from .gradcheck import gradcheck

__version__ = "0.1.0"
__all__ = ["Tensor", "Function", "no_grad", "gradcheck", "ConvMatrix", "set_backend", "get_backend",
           "set_num_threads", "set_workspace_limit", "workspace_limit"]
