"""The VGG16 layout (Simonyan & Zisserman), at any width, and its convolutionalization.

Five stages of 3x3 convolutions (2, 2, 3, 3, 3 layers) with 2x2 ceil-mode
max pools between them, then fc6, fc7 and a classifier. ``width`` scales the
channel counts (64 ... 512) so that a narrow net trains on a CPU.
"""

import copy

import numpy as np

from .. import functional as F
from .. import nn
from .geometry import path_map, receptive_field

VGG16_STAGES = [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]


def scaled(channels, width):
    return max(1, int(round(channels * width)))


def vgg16_backbone(width, first_padding, rng, batchnorm=False):
    """[(name, layer)] from conv1_1 to pool5, named as in the Caffe prototxt.

    ``batchnorm`` puts a BatchNorm2d (bn1_1, ...) between each convolution and its ReLU, as torchvision's
    vgg16_bn does: it lets the 16-layer net start learning from random weights. ``convolutionalize``
    folds each one into its convolution, so the FCN keeps the paper's layers."""
    layers, cin = [], 3
    for stage, (channels, depth) in enumerate(VGG16_STAGES, start=1):
        cout = scaled(channels, width)
        for i in range(1, depth + 1):
            padding = first_padding if (stage, i) == (1, 1) else 1
            layers.append((f"conv{stage}_{i}", nn.Conv2d(cin, cout, 3, padding=padding, rng=rng)))
            if batchnorm:
                layers.append((f"bn{stage}_{i}", nn.BatchNorm2d(cout)))
            layers.append((f"relu{stage}_{i}", nn.ReLU()))
            cin = cout
        layers.append((f"pool{stage}", nn.MaxPool2d(2, 2, ceil_mode=True)))
    return layers


def torchvision_vgg16_names():
    """{torchvision VGG16 layer name: minifcn/Caffe name}: features.0 -> conv1_1 ... classifier.3 -> fc7.

    torchvision numbers the layers of one nn.Sequential: each convolution is followed by a ReLU and each
    stage by a max pool, so the convolutions sit at 0, 2, 5, 7, 10, ... 28; fc6 and fc7 are
    classifier.0 and classifier.3 (after a ReLU and a dropout). classifier.6, the 1000 ImageNet
    classes, has no counterpart in an FCN.
    """
    names, index = {}, 0
    for stage, (_, depth) in enumerate(VGG16_STAGES, start=1):
        for i in range(1, depth + 1):
            names[f"features.{index}"] = f"conv{stage}_{i}"
            index += 2  # the convolution and its ReLU
        index += 1  # the stage's max pool
    names.update({"classifier.0": "fc6", "classifier.3": "fc7"})
    return names


class Backbone(nn.Module):
    """A Module whose layers run in registration order, recording named outputs ("taps")."""

    def add_layers(self, named_layers):
        for name, layer in named_layers:
            setattr(self, name, layer)

    def run(self, x, names, taps=()):
        """Run layers ``names`` in order; return the last output and a dict of the tapped ones."""
        tapped = {}
        for name in names:
            x = getattr(self, name)(x)
            if name in taps:
                tapped[name] = x
        return x, tapped

    def layers(self, names):
        return [getattr(self, n) for n in names]

    def coord_map(self, names):
        return path_map(self.layers(names))

    def receptive_field(self, names):
        return receptive_field(self.layers(names))


HEADS = ("flatten", "average")


class VGGClassifier(Backbone):
    """VGG16 for whole-image classification.

    ``head="flatten"`` is VGG's own: fc6 sees the flattened pool5 map, so the input size is baked into
    its weight shape and convolutionalization makes fc6 a (pool5 size)-wide convolution.
    ``head="average"`` applies fc6/fc7/fc8 to each pool5 pixel's feature vector and averages the class
    scores over the map: the net is then exactly its own convolutionalization (1 x 1 fc6) followed by
    a global average, so any input size works and the FCN starts from the very layers that learned.
    """

    def __init__(self, num_classes=21, width=1.0, fc_width=4096, input_size=224, seed=0, batchnorm=False,
                 head="flatten", dropout=0.5):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        rng = np.random.default_rng(seed)
        backbone = vgg16_backbone(width, 1, rng, batchnorm)
        self.add_layers(backbone)
        self.backbone_names = [n for n, _ in backbone]
        self.input_size, self.head, self.batchnorm = input_size, head, batchnorm
        self.pool5_size = self.output_size(input_size)
        c5 = scaled(512, width)
        self.fc6 = nn.Linear(c5 * self.fc6_kernel ** 2, fc_width, rng=rng)
        self.drop6 = nn.Dropout(dropout, seed=seed + 6)
        self.fc7 = nn.Linear(fc_width, fc_width, rng=rng)
        self.drop7 = nn.Dropout(dropout, seed=seed + 7)
        self.fc8 = nn.Linear(fc_width, num_classes, rng=rng)
        self.classes = self.names = None  # what each output means, where the weights say (``pretrained``)

    @property
    def fc6_kernel(self):
        """fc6's window on pool5 once convolutionalized."""
        return self.pool5_size if self.head == "flatten" else 1

    def output_size(self, size):
        """pool5 size for an input size: five ceil-mode halvings (3x3 convs with pad 1 keep size)."""
        for _ in range(5):
            size = -(-size // 2)
        return size

    def classify(self, images, batch_size=256):
        """Class probabilities (N, K) of uint8 RGB photos: an (N, H, W, 3) array or a list of (H, W, 3) ones.

        Each photo gets the preprocessing the weights learned with: resized to ``input_size`` squared
        (bilinear) where it is not already, and normalised with the ImageNet mean and spread. Runs in eval
        mode (running batch statistics, no dropout) and restores the mode it found."""
        from ..autograd import Tensor, no_grad
        from ..data.transforms import normalize
        from PIL import Image

        if isinstance(images, np.ndarray) and images.ndim == 3:
            raise ValueError(f"classify takes a batch (N, H, W, 3) or a list of photos, got one array of shape "
                             f"{images.shape}: wrap a single photo in a list")
        side, batch = self.input_size, []
        for i, image in enumerate(images):
            image = np.asarray(image)
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"photo {i} must be uint8 RGB (H, W, 3), got {image.dtype} {image.shape}")
            if image.shape[:2] != (side, side):
                image = np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR))
            batch.append(normalize(image))
        was_training, probabilities = self.training, []
        self.eval()
        try:
            with no_grad():
                for k in range(0, len(batch), batch_size):
                    scores = self(Tensor(np.stack(batch[k: k + batch_size]))).numpy().astype(np.float64)
                    scores = np.exp(scores - scores.max(axis=1, keepdims=True))
                    probabilities.append(scores / scores.sum(axis=1, keepdims=True))
        finally:
            self.train(was_training)
        return np.concatenate(probabilities) if probabilities else np.empty((0, self.fc8.weight.shape[0]))

    def forward(self, x):
        if self.head == "flatten" and x.shape[2:] != (self.input_size, self.input_size):
            raise ValueError(f"VGGClassifier was built for {self.input_size}x{self.input_size} inputs, "
                             f"got {x.shape[2]}x{x.shape[3]}: its fully connected fc6 fixes the size")
        h, _ = self.run(x, self.backbone_names)
        n, c, rows, cols = h.shape
        if self.head == "flatten":
            h = h.reshape(n, -1)
        else:  # every pool5 pixel is one feature vector: (N, C, h, w) -> (N h w, C)
            h = h.transpose(0, 2, 3, 1).reshape(n * rows * cols, c)
        h = self.drop6(F.relu(self.fc6(h)))
        h = self.drop7(F.relu(self.fc7(h)))
        scores = self.fc8(h)
        return scores if self.head == "flatten" else scores.reshape(n, rows * cols, -1).mean(axis=1)


class ConvolutionalVGG(Backbone):
    """The classifier with fc6/fc7/fc8 as convolutions: any input size in, a score map out."""

    def __init__(self, backbone_names, layers, fc6, fc7, fc8):
        super().__init__()
        self.add_layers(layers)
        self.backbone_names = backbone_names
        self.fc6, self.relu6, self.fc7, self.relu7, self.fc8 = fc6, nn.ReLU(), fc7, nn.ReLU(), fc8
        self.path = backbone_names + ["fc6", "relu6", "fc7", "relu7", "fc8"]

    def forward(self, x):
        return self.run(x, self.path)[0]


def convolutionalize(classifier):
    """Turn fully connected fc6/fc7/fc8 into k x k / 1 x 1 convolutions with the same weights.

    fc6's weight row for output unit o is the flattened (C, k, k) pool5 window,
    so reshaping it to (fc, C, k, k) gives a convolution that computes the same
    dot product at every k x k window. fc7 and fc8 see one vector per
    location: a 1 x 1 convolution. On the training size the score map is 1 x 1
    and equals the logits; on a larger input it is a map of them. (With the
    "average" head fc6 is 1 x 1 too, and the logits are the map's mean.)
    A BatchNorm2d is folded into the convolution before it (``fold_batchnorm``,
    its eval-mode statistics), so the result holds only the paper's layers.
    """
    k = classifier.fc6_kernel
    c5 = classifier.fc6.weight.shape[1] // (k * k)

    def conv_from(linear, kernel):
        out_f, in_f = linear.weight.shape
        conv = nn.Conv2d(in_f // (kernel * kernel), out_f, kernel, zero_init=True)
        conv.weight.data = linear.weight.data.reshape(conv.weight.shape).copy()
        conv.bias.data = linear.bias.data.copy()
        return conv

    assert c5 * k * k == classifier.fc6.weight.shape[1]
    layers, names = [], classifier.backbone_names
    for i, name in enumerate(names):
        layer = getattr(classifier, name)
        if isinstance(layer, nn.BatchNorm2d):
            continue  # folded into the convolution before it, below
        if i + 1 < len(names) and isinstance(getattr(classifier, names[i + 1]), nn.BatchNorm2d):
            layer = nn.fold_batchnorm(layer, getattr(classifier, names[i + 1]))
        layers.append((name, copy.deepcopy(layer)))
    return ConvolutionalVGG([n for n, _ in layers], layers, conv_from(classifier.fc6, k),
                            conv_from(classifier.fc7, 1), conv_from(classifier.fc8, 1))
