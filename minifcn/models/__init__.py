"""FCN-32s, FCN-16s and FCN-8s on the VGG16 layout, and the classifier they come from."""

from .fcn import FCN, bilinear_kernel
from .fcn8s import FCN8s
from .fcn16s import FCN16s
from .fcn32s import FCN32s
from .pixelwise import PixelwiseNet
from .summary import summary
from .vgg import ConvolutionalVGG, VGGClassifier, convolutionalize

MODELS = {"fcn32s": FCN32s, "fcn16s": FCN16s, "fcn8s": FCN8s, "pixelwise": PixelwiseNet}


def build(name, **config):
    """A model by its CLI name ('fcn32s', 'fcn16s', 'fcn8s', or the 'pixelwise' baseline)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name](**config)


__all__ = ["FCN", "FCN32s", "FCN16s", "FCN8s", "VGGClassifier", "ConvolutionalVGG", "convolutionalize",
           "PixelwiseNet", "bilinear_kernel", "summary", "build", "MODELS"]
