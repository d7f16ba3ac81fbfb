"""FCN-32s, FCN-16s and FCN-8s on the VGG16 layout, and the classifier they come from."""

import math

from .fcn import FCN, bilinear_kernel
from .fcn8s import FCN8s
from .fcn16s import FCN16s
from .fcn32s import FCN32s
from .pixelwise import PixelwiseNet
from . import shapes
from .summary import summary
from .vgg import ConvolutionalVGG, VGGClassifier, convolutionalize

MODELS = {"fcn32s": FCN32s, "fcn16s": FCN16s, "fcn8s": FCN8s, "pixelwise": PixelwiseNet}


def build(name, **config):
    """A model by its CLI name ('fcn32s', 'fcn16s', 'fcn8s', or the 'pixelwise' baseline)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    size = {"num_classes": 21, "width": 1.0, "fc_width": 4096, "fc6_kernel": 7, **config}
    if not (isinstance(size["width"], (int, float)) and math.isfinite(size["width"]) and size["width"] > 0):
        raise ValueError(f"width must be a finite number > 0, got {size['width']!r}")
    if not all(isinstance(size[k], int) and size[k] >= 1 for k in ("num_classes", "fc_width", "fc6_kernel")):
        raise ValueError(f"num_classes, fc_width and fc6_kernel must be integers >= 1, got "
                         f"{size['num_classes']!r}, {size['fc_width']!r}, {size['fc6_kernel']!r}")
    shapes.check_size(shapes.model_shapes(name, **size))  # before a single weight is allocated
    return MODELS[name](**config)


__all__ = ["FCN", "FCN32s", "FCN16s", "FCN8s", "VGGClassifier", "ConvolutionalVGG", "convolutionalize",
           "PixelwiseNet", "bilinear_kernel", "summary", "build", "MODELS"]
