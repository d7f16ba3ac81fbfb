"""Where a pixel of one feature map lies in another: crop offsets, derived.

Every spatial layer maps an input coordinate x to an output coordinate
y = a x + b (the authors' Caffe ``coord_map``; the centre of a window is what
is mapped):

    convolution / pooling, kernel k, stride s, pad p:   y = x / s + (p - (k - 1) / 2) / s
    transposed convolution (its inverse):               y = s x + (k - 1) / 2 - p

Composing the maps along a path gives data -> layer maps. Two maps at the same
scale, a x + b_A and a x + b_B, differ by a shift: pixel 0 of B sits at
pixel b_A - b_B of A, so A is cropped from there. With pad 100 on conv1_1
this yields 19 for FCN-32s, (5, 27) for FCN-16s and (5, 9, 31) for FCN-8s.
"""

from fractions import Fraction

from .. import nn


class CoordMap:
    """y = scale * x + offset, per spatial axis; exact (Fraction) arithmetic."""

    def __init__(self, scale=(1, 1), offset=(0, 0)):
        self.scale = tuple(Fraction(s) for s in scale)
        self.offset = tuple(Fraction(o) for o in offset)

    def then(self, other):
        """The map of applying self, then other."""
        return CoordMap([a2 * a1 for a1, a2 in zip(self.scale, other.scale)],
                        [a2 * b1 + b2 for b1, a2, b2 in zip(self.offset, other.scale, other.offset)])

    def __repr__(self):
        return f"CoordMap(scale={tuple(map(str, self.scale))}, offset={tuple(map(str, self.offset))})"


def layer_map(layer):
    """The coordinate map of one layer; identity for pointwise layers (ReLU, Dropout)."""
    if isinstance(layer, (nn.Conv2d, nn.MaxPool2d)):
        return CoordMap([Fraction(1, s) for s in layer.stride],
                        [Fraction(2 * p - d * (k - 1), 2 * s) for k, s, p, d in
                         zip(layer.kernel_size, layer.stride, layer.padding, layer.dilation)])
    if isinstance(layer, nn.ConvTranspose2d):
        return CoordMap(layer.stride, [Fraction(k - 1, 2) - p for k, p in zip(layer.kernel_size, layer.padding)])
    return CoordMap()


def path_map(layers):
    """The composed map of a sequence of layers, input to output."""
    total = CoordMap()
    for layer in layers:
        total = total.then(layer_map(layer))
    return total


def crop_offset(big, small):
    """Offset (top, left) at which ``small``'s pixel 0 lies in ``big``; both are data -> map CoordMaps."""
    if big.scale != small.scale:
        raise ValueError(f"cannot align maps at different scales: {big} and {small}")
    offsets = tuple(b - s for b, s in zip(big.offset, small.offset))
    if any(o.denominator != 1 or o < 0 for o in offsets):
        raise ValueError(f"maps {big} and {small} are not aligned by a whole, non-negative shift: {offsets}")
    return tuple(int(o) for o in offsets)


def receptive_field(layers):
    """(receptive field, stride) of the last layer: rf grows by (extent - 1) * jump at each layer."""
    rf, jump = 1, 1
    for layer in layers:
        if isinstance(layer, (nn.Conv2d, nn.MaxPool2d)):
            extent = layer.dilation[0] * (layer.kernel_size[0] - 1) + 1
            rf += (extent - 1) * jump
            jump *= layer.stride[0]
    return rf, jump
