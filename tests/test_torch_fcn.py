"""Cross-check: an FCN-8s written in PyTorch with pytorch-fcn's layer names (built here, as an oracle).

Loading its state dict into minifcn's FCN8s must give the same scores. The speed benchmark's PyTorch twin
of the Tiny ImageNet classifier must compute what minifcn's does. Marked 'torch'; run in CI.
"""

import os
import sys

import numpy as np
import pytest

from minifcn import Tensor, no_grad
from minifcn import functional as F
from minifcn.models import FCN8s, VGGClassifier

torch = pytest.importorskip("torch", reason="PyTorch cross-checks need the 'crosscheck' extra")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
from torch_reference import TorchFCN8s, TorchVGGClassifier  # noqa: E402  (shared with the speed benchmarks)

pytestmark = pytest.mark.torch


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


def test_pad32_mode_gives_the_same_scores_as_pytorch_padded_the_same_way():
    """minifcn's pad32 FCN-8s (conv1_1 pad 1, fc6 pad 3, upsamplers padded (k - s) / 2, crops at 0)."""
    torch.manual_seed(1)
    ref = TorchFCN8s(5, (4, 8, 16, 32, 32), 32, input_mode="pad32").double().eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.3)
    mine = FCN8s(num_classes=5, width=1 / 16, fc_width=32, input_mode="pad32")
    for p in mine.parameters():
        p.data = p.data.astype(np.float64)
    mine.load_state_dict({k: v.numpy() for k, v in ref.state_dict().items()})
    mine.eval()
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 96))
    with no_grad():
        ours = mine(Tensor(x)).data
    np.testing.assert_allclose(ours, ref(torch.tensor(x)).detach().numpy(), rtol=1e-9, atol=1e-9)


def test_the_benchmarks_pytorch_classifier_is_minifcns():
    """The same weights (fc layers as 1 x 1 convolutions) give the same training-mode scores, with batch
    statistics, and the same loss gradient: the classifier rows of benchmarks/speed.py time one computation."""
    torch.manual_seed(2)
    ref = TorchVGGClassifier(7, (4, 8, 16, 32, 32), 24).double().train()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.3)
    mine = VGGClassifier(7, 1 / 16, 24, 64, batchnorm=True, head="average", dropout=0.0)
    theirs = list(ref.parameters())
    assert len(theirs) == len(list(mine.parameters()))
    for p, q in zip(mine.parameters(), theirs):
        p.data = q.detach().numpy().reshape(p.data.shape).copy()
    x = np.random.default_rng(2).standard_normal((3, 3, 64, 64))
    y = np.array([0, 4, 6])
    loss = F.softmax_cross_entropy(mine(Tensor(x)), y)
    loss.backward()
    ref_loss = torch.nn.functional.cross_entropy(ref(torch.tensor(x)), torch.tensor(y))
    ref_loss.backward()
    np.testing.assert_allclose(loss.item(), ref_loss.item(), rtol=1e-9)
    for p, q in zip(mine.parameters(), theirs):
        np.testing.assert_allclose(p.grad, q.grad.numpy().reshape(p.grad.shape), rtol=1e-7, atol=1e-9)
