"""The pixelwise baseline: a net of 1x1 convolutions only, so each output pixel sees one input pixel.

It is the control for the Table 2 experiment: if appearance were a colour lookup, this net would
segment as well as an FCN. Where it fails, the FCN's spatial context is what makes the difference.
"""

import numpy as np

from .. import nn
from .vgg import scaled


class PixelwiseNet(nn.Module):
    def __init__(self, num_classes=21, width=1.0, fc_width=4096, input_mode="pad32", learnable=None, seed=0,
                 upsampling="paper", preprocess="imagenet", fc6_kernel=7):
        super().__init__()
        hidden = scaled(512, width)  # as wide as the FCN's conv5 layers; the other settings are an FCN's, unused
        self.config = dict(num_classes=num_classes, width=width, fc_width=fc_width, input_mode=input_mode,
                           seed=seed, upsampling=upsampling, preprocess=preprocess, fc6_kernel=fc6_kernel)
        self.preprocess = preprocess
        rng = np.random.default_rng(seed)
        self.conv1 = nn.Conv2d(3, hidden, 1, rng=rng)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(hidden, hidden, 1, rng=rng)
        self.relu2 = nn.ReLU()
        self.score = nn.Conv2d(hidden, num_classes, 1, zero_init=True)

    def forward(self, x):
        return self.score(self.relu2(self.conv2(self.relu1(self.conv1(x)))))
