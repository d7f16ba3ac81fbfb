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
from ..data.transforms import PREPROCESS
from .geometry import CoordMap, crop_offset
from .vgg import Backbone, convolutionalize, scaled, torchvision_vgg16_names, vgg16_backbone

INPUT_MODES = ("pad100", "pad32")
UPSAMPLING = ("paper", "learned", "fixed")


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
    """The shared body. ``upsampling``: "paper" (section 4.3: the final upsampling stays fixed bilinear,
    the intermediate 2x ones start bilinear and learn), "learned" (all learn) or "fixed" (none learns, as
    in the authors' released nets). ``learnable`` is the older switch: True means "learned", False
    "fixed". ``preprocess``: how input images must be normalised for these weights (data.normalize).
    """

    def __init__(self, num_classes=21, width=1.0, fc_width=4096, input_mode="pad100", learnable=None, seed=0,
                 upsampling="paper", preprocess="imagenet", fc6_kernel=7):
        super().__init__()
        if learnable is not None:
            upsampling = "learned" if learnable else "fixed"
        if input_mode not in INPUT_MODES:
            raise ValueError(f"input_mode must be one of {INPUT_MODES}, got {input_mode!r}")
        if upsampling not in UPSAMPLING:
            raise ValueError(f"upsampling must be one of {UPSAMPLING}, got {upsampling!r}")
        if preprocess not in PREPROCESS:
            raise ValueError(f"preprocess must be one of {PREPROCESS}, got {preprocess!r}")
        if num_classes < 1 or width <= 0 or fc_width < 1:
            raise ValueError(f"num_classes {num_classes}, width {width} and fc_width {fc_width} must be positive")
        if fc6_kernel < 1 or fc6_kernel % 2 == 0:
            raise ValueError(f"fc6_kernel must be odd (its window centred on a pool5 pixel), got {fc6_kernel}")
        self.config = dict(num_classes=num_classes, width=width, fc_width=fc_width, input_mode=input_mode,
                           seed=seed, upsampling=upsampling, preprocess=preprocess, fc6_kernel=fc6_kernel)
        self.input_mode, self.num_classes, self.upsampling, self.preprocess = (input_mode, num_classes, upsampling,
                                                                               preprocess)
        rng = np.random.default_rng(seed)
        pad100 = input_mode == "pad100"
        backbone = vgg16_backbone(width, 100 if pad100 else 1, rng)
        self.add_layers(backbone)
        c5 = scaled(512, width)
        # fc6 sees a k x k window of pool5: VGG16's 7 (a 224-px image); a classifier trained on 32k-px crops gives k
        self.fc6 = nn.Conv2d(c5, fc_width, fc6_kernel, padding=0 if pad100 else fc6_kernel // 2, rng=rng)
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

    def load_vgg16(self, state_dict):
        """Start from an ImageNet-trained VGG16 in torchvision's names: the paper's initialisation.

        Each ``features.N`` convolution goes to its conv{stage}_{i}; fc6 and fc7 are convolutionalized
        as in the paper: ``classifier.0`` (fc x 512*7*7) is reshaped to a 7x7 convolution, its rows being
        flattened (512, 7, 7) pool5 windows, and ``classifier.3`` to a 1x1 one. The ImageNet scorer
        (classifier.6) is dropped; the score layers restart at zero and the upsamplers at bilinear.
        A tensor whose shape does not fit (a model of another width) is named in the error.
        """
        own = dict(self.named_parameters())
        mapped = {}
        for source, target in torchvision_vgg16_names().items():
            for part in ("weight", "bias"):
                key = f"{source}.{part}"
                if key not in state_dict:
                    raise ValueError(f"VGG16 state dict has no {key}; is it torchvision's VGG16 layout?")
                value, want = np.asarray(state_dict[key]), own[f"{target}.{part}"].shape
                fully_connected = source.startswith("classifier") and part == "weight"
                expected = (want[0], int(np.prod(want[1:]))) if fully_connected else want
                if value.shape != expected:
                    raise ValueError(f"{key} has shape {value.shape}, but this model's {target}.{part} needs "
                                     f"{expected} (width {self.config['width']}, fc_width "
                                     f"{self.config['fc_width']}); a full VGG16 needs width=1.0, fc_width=4096")
                mapped[f"{target}.{part}"] = value.reshape(want)  # fc6/fc7: a fully connected row is a k x k filter
        self.load_state_dict(mapped, strict=False)
        for name, module in self._modules.items():
            if name.startswith("score"):
                module.weight.data[...] = 0
                module.bias.data[...] = 0
            elif name.startswith("upscore"):
                module.weight.data = self.upsampler(module.kernel_size[0], module.stride[0]).weight.data.copy()
        return self

    def load_classifier(self, classifier):
        """Start from a trained VGGClassifier: ``convolutionalize`` it and take its body, fc6 and fc7 (the
        paper's recipe). Its fc8 scores other classes (or the same ones at image level) and is dropped;
        the score layers restart at zero. fc6's k x k window must match: build with fc6_kernel = k."""
        convolutional = convolutionalize(classifier)
        own = dict(self.named_parameters())
        state = {k: v for k, v in convolutional.state_dict().items() if not k.startswith("fc8")}
        for name, value in state.items():
            if own[name].shape != value.shape:
                raise ValueError(f"the classifier's {name} is {value.shape}, this FCN's is {own[name].shape} (a "
                                 f"classifier on {classifier.input_size}-px crops needs fc6_kernel="
                                 f"{classifier.fc6_kernel} and the same widths)")
        self.load_state_dict(state, strict=False)
        return self

    def score_layer(self, in_channels):
        """A 1x1 class scorer, zero-initialised (the paper's choice: start from no opinion)."""
        return nn.Conv2d(in_channels, self.num_classes, 1, zero_init=True)

    def upsampler(self, kernel, stride, final=False):
        """A bias-free transposed convolution initialised to bilinear interpolation, class by class.

        Whether it learns follows ``upsampling``; ``final`` marks the last one (to the input's size).
        """
        padding = (kernel - stride) // 2 if self.input_mode == "pad32" else 0
        up = nn.ConvTranspose2d(self.num_classes, self.num_classes, kernel, stride, padding, bias=False)
        weight = np.zeros(up.weight.shape, np.float32)
        weight[np.arange(self.num_classes), np.arange(self.num_classes)] = bilinear_kernel(kernel)
        up.weight.data = weight
        up.weight.requires_grad = self.upsampling == "learned" or (self.upsampling == "paper" and not final)
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

    def upsample_to(self, up, scores, offset, size):
        """crop(up(scores), offset, size), the last upsampling and the crop to the input's size, without the
        work the crop would throw away.

        Output row r of a transposed convolution (stride s, padding p, k taps) gathers the input rows i with
        i*s - p <= r <= i*s - p + k - 1. The crop keeps rows offset ... offset + size - 1, which need only
        input rows ceil((offset + p - k + 1) / s) ... floor((offset + size - 1 + p) / s). So the scores are
        cropped to those rows and columns first (pad 100, a 128-px input: 18 of 26, half the upsampling's
        multiply-adds), upsampled unpadded, and cropped to the window: the same sums, the same gradients.
        """
        first, count, start = [], [], []
        for n, o, m, s, p, k, q in zip(scores.shape[2:], offset, size, up.stride, up.padding, up.kernel_size,
                                       up.output_padding):
            lo, hi = max(0, -(-(o + p - k + 1) // s)), min(n - 1, (o + m - 1 + p) // s)
            begin = o + p - lo * s  # where the window starts in the upsampling of rows lo ... hi
            if hi < lo or begin < 0 or begin + m > (hi - lo) * s + k + q:  # k < s: the window meets a gap
                return F.crop(up(scores), *offset, *size)
            first.append(lo)
            count.append(hi - lo + 1)
            start.append(begin)
        needed = F.crop(scores, *first, *count) if tuple(count) != scores.shape[2:] else scores
        y = up.transpose(needed, padding=0)
        return F.crop(y, *start, *size)
