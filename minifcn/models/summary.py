"""The paper's Table 1 row for a model: parameters, conv layers, receptive field, stride."""

from .. import nn
from ..functional import pool_output_size
from ..conv_arithmetic import conv_output_hw


def summary(model, input_size=(500, 500)):
    """A dict describing ``model``'s main path (input to coarse scores) for an (H, W) input.

    ``receptive_field`` is the input extent one coarse score sees, ``max_stride``
    the input pixels between neighbouring scores; ``coarse_size`` follows the
    size arithmetic of each layer without running the net.
    """
    layers = model.path_layers()
    rf, stride = model.receptive_field(model.path)
    size = list(input_size)
    if model.input_mode == "pad32":
        size = [n + (-n % 32) for n in size]
    for layer in layers:
        if isinstance(layer, nn.Conv2d):
            size = list(conv_output_hw(size, layer.kernel_size, layer.stride, layer.padding, layer.dilation))
        elif isinstance(layer, nn.MaxPool2d):
            size = [pool_output_size(n, k, s, p, layer.ceil_mode) for n, k, s, p in
                    zip(size, layer.kernel_size, layer.stride, layer.padding)]
    per_layer = {name: sum(p.data.size for p in module.parameters())
                 for name, module in model._modules.items() if module.parameters()}
    return {
        "model": type(model).__name__,
        "parameters": sum(per_layer.values()),
        "parameters_per_layer": per_layer,
        "conv_layers": sum(isinstance(layer, nn.Conv2d) for layer in layers),
        "receptive_field": rf,
        "max_stride": stride,
        "coarse_size": tuple(size),
    }
