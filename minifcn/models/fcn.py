"""What FCN-32s, FCN-16s and FCN-8s share: the VGG16 body, fc6/fc7 as convolutions, score_fr.

Two ways to get an output of exactly the input's size (the review's figure 10):

- ``input_mode="pad100"`` (the paper): conv1_1 pads by 100 so that even a tiny
  input leaves fc6 a 7x7 window; the upsampled scores are larger than the
  input and are cropped at offsets derived from the layer geometry.
- ``input_mode="pad32"``: no big pad; the input is zero-padded at the bottom
  and right to a multiple of 32, fc6 pads by 3 and every upsampler by
  (k - s) / 2, so all maps line up at offset 0; the result is cropped back.
"""

import numpy as np

from .. import functional as F
from .. import nn
from .geometry import CoordMap, crop_offset
from .vgg import Backbone, scaled, vgg16_backbone

INPUT_MODES = ("pad100", "pad32")


def bilinear_kernel(k):
    """A k x k bilinear interpolation filter: the outer product of a 1-D tent.

    The tent has its peak at the kernel centre c = (k - 1) / 2 and falls to 0 at
    distance f = ceil(k / 2), so with stride f a transposed convolution by it
    interpolates linearly between input pixels (the paper's initialisation).
    """
    f = (k + 1) // 2
    centre = (k - 1) / 2
    tent = 1 - np.abs(np.arange(k) - centre) / f
    return np.outer(tent, tent).astype(np.float32)


class FCN(Backbone):
    def __init__(self, num_classes=21, width=1.0, fc_width=4096, input_mode="pad100", learnable=True, seed=0):
        super().__init__()
        if input_mode not in INPUT_MODES:
            raise ValueError(f"input_mode must be one of {INPUT_MODES}, got {input_mode!r}")
        if num_classes < 1 or width <= 0 or fc_width < 1:
            raise ValueError(f"num_classes {num_classes}, width {width} and fc_width {fc_width} must be positive")
        self.config = dict(num_classes=num_classes, width=width, fc_width=fc_width, input_mode=input_mode,
                           learnable=learnable, seed=seed)
        self.input_mode, self.num_classes, self.learnable = input_mode, num_classes, learnable
        rng = np.random.default_rng(seed)
        pad100 = input_mode == "pad100"
        backbone = vgg16_backbone(width, 100 if pad100 else 1, rng)
        self.add_layers(backbone)
        c5 = scaled(512, width)
        self.fc6 = nn.Conv2d(c5, fc_width, 7, padding=0 if pad100 else 3, rng=rng)
        self.relu6, self.drop6 = nn.ReLU(), nn.Dropout(0.5, seed=seed + 6)
        self.fc7 = nn.Conv2d(fc_width, fc_width, 1, rng=rng)
        self.relu7, self.drop7 = nn.ReLU(), nn.Dropout(0.5, seed=seed + 7)
        self.score_fr = self.score_layer(fc_width)
        self.path = [n for n, _ in backbone] + ["fc6", "relu6", "drop6", "fc7", "relu7", "drop7", "score_fr"]

    @classmethod
    def from_model(cls, other):
        """A model of this class with ``other``'s configuration and every weight the two share by name.

        The paper's staged training (32s -> 16s -> 8s): the new skip scorers start at zero, so the
        new net first predicts what the old one did, and the old upsampler (upscore, upscore16) is
        simply not among the new net's names.
        """
        return cls(**other.config).load_state_dict(other.state_dict(), strict=False)

    def score_layer(self, in_channels):
        """A 1x1 class scorer, zero-initialised (the paper's choice: start from no opinion)."""
        return nn.Conv2d(in_channels, self.num_classes, 1, zero_init=True)

    def upsampler(self, kernel, stride):
        """A bias-free transposed convolution initialised to bilinear interpolation, class by class."""
        padding = (kernel - stride) // 2 if self.input_mode == "pad32" else 0
        up = nn.ConvTranspose2d(self.num_classes, self.num_classes, kernel, stride, padding, bias=False)
        weight = np.zeros(up.weight.shape, np.float32)
        weight[np.arange(self.num_classes), np.arange(self.num_classes)] = bilinear_kernel(kernel)
        up.weight.data = weight
        up.weight.requires_grad = self.learnable
        return up

    def map_of(self, *names):
        """The data -> output coordinate map of the layers before and including ``names``' last entry.

        Names may leave the main path: ``map_of("pool4", "score_pool4")``.
        """
        last_on_path = max(i for i, n in enumerate(self.path) if n in names)
        off_path = [n for n in names if n not in self.path]
        return self.coord_map(self.path[:last_on_path + 1] + off_path)

    def crop_to(self, big, offset, like):
        return F.crop(big, offset[0], offset[1], like.shape[2], like.shape[3])

    def final_offset(self, *names):
        return crop_offset(self.map_of(*names), CoordMap())

    def prepare(self, x):
        """pad32 mode: zero-pad bottom/right to a multiple of 32. Returns the input and its original size."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"FCN input must be (N, 3, H, W), got shape {x.shape}")
        H, W = x.shape[2:]
        if self.input_mode == "pad32":
            x = F.pad2d(x, 0, -H % 32, 0, -W % 32)
        return x, (H, W)

    def body(self, x, taps=()):
        """conv1_1 ... score_fr; returns the coarse scores and the tapped pool outputs."""
        return self.run(x, self.path, taps)

    def path_layers(self):
        """The main path's layers, input to coarse scores (for summary)."""
        return self.layers(self.path)

    def output(self, scores, offset, size):
        return F.crop(scores, offset[0], offset[1], *size)
