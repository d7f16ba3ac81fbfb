"""Cross-check: an FCN-8s written in PyTorch with pytorch-fcn's layer names (built here, as an oracle).

Loading its state dict into minifcn's FCN8s must give the same scores. Marked 'torch'; run in CI.
"""

import numpy as np
import pytest

from minifcn import Tensor, no_grad
from minifcn.models import FCN8s

torch = pytest.importorskip("torch", reason="PyTorch cross-checks need the 'crosscheck' extra")
nn = torch.nn
pytestmark = pytest.mark.torch


class TorchFCN8s(nn.Module):
    """The layer names, shapes, pad 100 and crops 5, 9, 31 of torchfcn.models.FCN8s, at any width."""

    def __init__(self, n_class, widths, fc):
        super().__init__()
        cin, self.stages = 3, []
        for s, (c, depth) in enumerate(zip(widths, (2, 2, 3, 3, 3)), start=1):
            names = []
            for i in range(1, depth + 1):
                setattr(self, f"conv{s}_{i}", nn.Conv2d(cin, c, 3, padding=100 if (s, i) == (1, 1) else 1))
                names.append(f"conv{s}_{i}")
                cin = c
            setattr(self, f"pool{s}", nn.MaxPool2d(2, 2, ceil_mode=True))
            self.stages.append(names)
        self.fc6, self.fc7 = nn.Conv2d(cin, fc, 7), nn.Conv2d(fc, fc, 1)
        self.score_fr = nn.Conv2d(fc, n_class, 1)
        self.score_pool3, self.score_pool4 = nn.Conv2d(widths[2], n_class, 1), nn.Conv2d(widths[3], n_class, 1)
        self.upscore2 = nn.ConvTranspose2d(n_class, n_class, 4, stride=2, bias=False)
        self.upscore8 = nn.ConvTranspose2d(n_class, n_class, 16, stride=8, bias=False)
        self.upscore_pool4 = nn.ConvTranspose2d(n_class, n_class, 4, stride=2, bias=False)

    def forward(self, x):
        h, pools = x, {}
        for s, names in enumerate(self.stages, start=1):
            for name in names:
                h = torch.relu(getattr(self, name)(h))
            h = pools[s] = getattr(self, f"pool{s}")(h)
        h = self.score_fr(torch.relu(self.fc7(torch.relu(self.fc6(h)))))
        up2 = self.upscore2(h)
        p4 = self.score_pool4(pools[4])[:, :, 5:5 + up2.size(2), 5:5 + up2.size(3)]
        up_p4 = self.upscore_pool4(up2 + p4)
        p3 = self.score_pool3(pools[3])[:, :, 9:9 + up_p4.size(2), 9:9 + up_p4.size(3)]
        h = self.upscore8(up_p4 + p3)
        return h[:, :, 31:31 + x.size(2), 31:31 + x.size(3)]


@pytest.mark.parametrize("size", [(37, 50), (64, 64)])
def test_pytorch_fcn8s_state_dict_gives_the_same_scores(size):
    torch.manual_seed(0)
    ref = TorchFCN8s(5, (4, 8, 16, 32, 32), 32).double().eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.3)
    mine = FCN8s(num_classes=5, width=1 / 16, fc_width=32)
    state = {k: v.numpy() for k, v in ref.state_dict().items()}
    assert list(state) == list(mine.state_dict())  # same names, same order
    for p in mine.parameters():  # float64 first: load_state_dict keeps each parameter's dtype
        p.data = p.data.astype(np.float64)
    mine.load_state_dict(state)
    mine.eval()
    x = np.random.default_rng(0).standard_normal((2, 3) + size)
    with no_grad():
        ours = mine(Tensor(x)).data
    np.testing.assert_allclose(ours, ref(torch.tensor(x)).detach().numpy(), rtol=1e-9, atol=1e-9)
