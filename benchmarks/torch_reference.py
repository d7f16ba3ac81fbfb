"""PyTorch oracles for cross-check tests and speed benchmarks (PyTorch is never needed at run time)."""

import torch
from torch import nn


class TorchFCN8s(nn.Module):
    """The layer names, shapes, pad 100 and crops 5, 9, 31 of torchfcn.models.FCN8s, at any width.

    ``input_mode="pad32"`` is minifcn's alternative (for speed comparisons): conv1_1 pads by 1, fc6 by 3,
    each upsampler by (k - s) / 2, so every crop is at 0 (the input must be a multiple of 32).
    """

    def __init__(self, n_class, widths, fc, input_mode="pad100"):
        super().__init__()
        pad32 = input_mode == "pad32"
        self.offsets = (0, 0, 0) if pad32 else (5, 9, 31)
        cin, self.stages = 3, []
        for s, (c, depth) in enumerate(zip(widths, (2, 2, 3, 3, 3)), start=1):
            names = []
            for i in range(1, depth + 1):
                first = 1 if pad32 else 100
                setattr(self, f"conv{s}_{i}", nn.Conv2d(cin, c, 3, padding=first if (s, i) == (1, 1) else 1))
                names.append(f"conv{s}_{i}")
                cin = c
            setattr(self, f"pool{s}", nn.MaxPool2d(2, 2, ceil_mode=True))
            self.stages.append(names)
        self.fc6, self.fc7 = nn.Conv2d(cin, fc, 7, padding=3 if pad32 else 0), nn.Conv2d(fc, fc, 1)
        self.drop6, self.drop7 = nn.Dropout(0.5), nn.Dropout(0.5)  # identity in eval mode
        self.score_fr = nn.Conv2d(fc, n_class, 1)
        self.score_pool3, self.score_pool4 = nn.Conv2d(widths[2], n_class, 1), nn.Conv2d(widths[3], n_class, 1)
        self.upscore2 = nn.ConvTranspose2d(n_class, n_class, 4, stride=2, padding=1 if pad32 else 0, bias=False)
        self.upscore8 = nn.ConvTranspose2d(n_class, n_class, 16, stride=8, padding=4 if pad32 else 0, bias=False)
        self.upscore_pool4 = nn.ConvTranspose2d(n_class, n_class, 4, stride=2, padding=1 if pad32 else 0, bias=False)

    def forward(self, x):
        h, pools = x, {}
        for s, names in enumerate(self.stages, start=1):
            for name in names:
                h = torch.relu(getattr(self, name)(h))
            h = pools[s] = getattr(self, f"pool{s}")(h)
        h = self.score_fr(self.drop7(torch.relu(self.fc7(self.drop6(torch.relu(self.fc6(h)))))))
        (a, b, c), up2 = self.offsets, self.upscore2(h)
        p4 = self.score_pool4(pools[4])[:, :, a:a + up2.size(2), a:a + up2.size(3)]
        up_p4 = self.upscore_pool4(up2 + p4)
        p3 = self.score_pool3(pools[3])[:, :, b:b + up_p4.size(2), b:b + up_p4.size(3)]
        h = self.upscore8(up_p4 + p3)
        return h[:, :, c:c + x.size(2), c:c + x.size(3)]


class TorchVGGClassifier(nn.Sequential):
    """minifcn's VGGClassifier with batch norm and the "average" head: VGG16's 13 convolutions at any width,
    each followed by BatchNorm2d and ReLU, ceil-mode pools, then fc6, fc7, fc8 applied at every pool5 pixel
    (1 x 1 convolutions) and the class scores averaged over the map."""

    def __init__(self, n_class, widths, fc):
        layers, cin = [], 3
        for c, depth in zip(widths, (2, 2, 3, 3, 3)):
            for _ in range(depth):
                layers += [nn.Conv2d(cin, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
                cin = c
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
        layers += [nn.Conv2d(cin, fc, 1), nn.ReLU(), nn.Conv2d(fc, fc, 1), nn.ReLU(), nn.Conv2d(fc, n_class, 1)]
        super().__init__(*layers)

    def forward(self, x):
        return super().forward(x).mean(dim=(2, 3))
