"""PyTorch files read without PyTorch: both formats bit for bit, hostile pickles refused, VGG16 and FCN weights.

Files are written by the real torch.save (the 'crosscheck' extra); reading them never imports torch.
The hostile files are built by hand and need no torch.
"""

import collections
import json
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import forge
from minifcn import Tensor, no_grad
from minifcn.cli import main
from minifcn.models import FCN8s
from minifcn.models.vgg import torchvision_vgg16_names
from minifcn.weights import LEGACY_MAGIC, LEGACY_PROTOCOL, kind_of, load_pth, state_dict_of

FORMATS = {"zip": {}, "legacy": {"_use_new_zipfile_serialization": False}}


def needs_torch():
    return pytest.importorskip("torch", reason="writing real .pth files needs the 'crosscheck' extra (torch)")


def nested_checkpoint(torch):
    """Every dtype, views with offsets and strides, shared storages, 0-d tensors, parameters, containers."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(5, 7, generator=g)
    return {
        "model_state_dict": collections.OrderedDict([
            ("w", base), ("rows", base[2:]), ("cols", base[:, 1::3]), ("t", base.t()), ("one", base[3, 4]),
            ("param", torch.nn.Parameter(torch.randn(2, 3, dtype=torch.float64, generator=g))),
        ]),
        "dtypes": [torch.randn(3, generator=g).half(), torch.tensor([1.5, -2.25]).bfloat16(),
                   torch.arange(-3, 3, dtype=torch.int64), torch.arange(4, dtype=torch.int32) * 1000,
                   torch.arange(5, dtype=torch.int16), torch.arange(-2, 2, dtype=torch.int8),
                   torch.arange(250, 256, dtype=torch.uint8), torch.tensor([True, False, True]),
                   torch.tensor(7, dtype=torch.int64), torch.zeros(0, 4)],
        "meta": ("fcn8s", 3, 2.5, None, True, {"nested": [1, (2, "three")]}),
    }


def as_numpy(value, torch):
    if isinstance(value, torch.Tensor):
        value = value.detach()
        return value.float().numpy() if value.dtype == torch.bfloat16 else value.numpy()
    if isinstance(value, dict):
        return type(value)((k, as_numpy(v, torch)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(as_numpy(v, torch) for v in value)
    return value


def assert_same(got, want, where="checkpoint"):
    assert type(got) is type(want), f"{where}: {type(got).__name__} != {type(want).__name__}"
    if isinstance(want, np.ndarray):
        assert got.dtype == want.dtype and got.shape == want.shape, f"{where}: {got.dtype}{got.shape}"
        assert np.array_equal(got, want), where  # bit for bit (no NaNs in these files)
    elif isinstance(want, dict):
        assert list(got) == list(want), where
        for k in want:
            assert_same(got[k], want[k], f"{where}[{k!r}]")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want)):
            assert_same(a, b, f"{where}[{i}]")
    else:
        assert got == want, where


@pytest.mark.torch
@pytest.mark.parametrize("fmt", FORMATS)
def test_both_formats_come_back_bit_for_bit(tmp_path, fmt):
    torch = needs_torch()
    obj = nested_checkpoint(torch)
    path = tmp_path / f"{fmt}.pth"
    torch.save(obj, path, **FORMATS[fmt])
    assert zipfile.is_zipfile(path) == (fmt == "zip")
    got = load_pth(path)
    assert_same(got, as_numpy(obj, torch))
    assert got["model_state_dict"]["t"].flags.c_contiguous  # an array of its own, not a view into the file


@pytest.mark.torch
def test_loading_never_imports_torch(tmp_path):
    torch = needs_torch()
    obj = nested_checkpoint(torch)
    for fmt, kwargs in FORMATS.items():
        torch.save(obj, tmp_path / f"{fmt}.pth", **kwargs)
    script = ("import sys; sys.modules['torch'] = None  # any 'import torch' now fails\n"
              "import json, numpy as np\nfrom minifcn.weights import load_pth\n"
              "out = {}\nfor fmt in ('zip', 'legacy'):\n"
              "    sd = load_pth(sys.argv[1] + '/' + fmt + '.pth')['model_state_dict']\n"
              "    out[fmt] = {k: [float(np.sum(v, dtype=np.float64)), list(v.shape)] for k, v in sd.items()}\n"
              "print(json.dumps(out))")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, check=True)
    sums = json.loads(done.stdout)
    want = {k: [float(v.detach().double().sum()), list(v.shape)] for k, v in obj["model_state_dict"].items()}
    assert sums["zip"] == sums["legacy"] == want


class Hostile:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker, how=os.system):
        self.marker, self.how = marker, how

    def __reduce__(self):
        if self.how is eval:
            return eval, (f"open({self.marker!r}, 'w').close()",)
        return self.how, (f"touch {self.marker}",)


def hostile_file(path, payload, fmt):
    if fmt == "zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/data.pkl", payload)
            z.writestr("archive/byteorder", "little")
    else:
        with open(path, "wb") as f:
            for part in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True}):
                pickle.dump(part, f, protocol=2)
            f.write(payload)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("how, named", [(os.system, r"(posix|nt)\.system"), (eval, r"(builtins|__builtin__)\.eval")])
def test_hostile_pickles_are_refused_and_run_nothing(tmp_path, fmt, how, named):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"conv1_1.weight": Hostile(str(marker), how)}, protocol=2)
    path = tmp_path / f"evil-{fmt}.pth"
    hostile_file(path, payload, fmt)
    with pytest.raises(ValueError, match=f"refused to load the global .*{named}"):
        load_pth(path)
    assert not marker.exists()


def test_a_hostile_global_in_the_legacy_header_is_refused_too(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps(Hostile(str(marker)), protocol=2))
    with pytest.raises(ValueError, match="refused"):
        load_pth(path)
    assert not marker.exists()


@pytest.mark.parametrize("content, why", [(b"", "not a readable"), (b"\x00" * 64, "not a readable"),
                                          (b"PK\x03\x04garbage", "not a readable")])
def test_files_that_are_not_checkpoints_get_one_clear_error(tmp_path, content, why):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=why):
        load_pth(path)


def torch_vgg16(torch, widths, fc):
    """torchvision's VGG16 layout (features / classifier Sequentials) at any width, for a small test."""
    layers, cin = [], 3
    for c, depth in zip(widths, (2, 2, 3, 3, 3)):
        for _ in range(depth):
            layers += [torch.nn.Conv2d(cin, c, 3, padding=1), torch.nn.ReLU()]
            cin = c
        layers.append(torch.nn.MaxPool2d(2, 2))
    model = torch.nn.Module()
    model.features = torch.nn.Sequential(*layers)
    model.classifier = torch.nn.Sequential(torch.nn.Linear(cin * 49, fc), torch.nn.ReLU(), torch.nn.Dropout(),
                                           torch.nn.Linear(fc, fc), torch.nn.ReLU(), torch.nn.Dropout(),
                                           torch.nn.Linear(fc, 1000))
    return model.eval()


@pytest.mark.torch
@pytest.mark.parametrize("fmt", FORMATS)
def test_vgg16_is_convolutionalized_layer_by_layer(tmp_path, fmt):
    torch = needs_torch()
    torch.manual_seed(0)
    vgg = torch_vgg16(torch, (4, 8, 16, 32, 32), 48)
    torch.save(vgg.state_dict(), tmp_path / "vgg16.pth", **FORMATS[fmt])
    state = state_dict_of(load_pth(tmp_path / "vgg16.pth"))
    assert kind_of(state) == "vgg16"
    net = FCN8s(width=1 / 16, fc_width=48, input_mode="pad32").load_vgg16(state)
    for source, target in torchvision_vgg16_names().items():
        w, b = getattr(net, target).weight.data, getattr(net, target).bias.data
        assert np.array_equal(w.reshape(len(w), -1), state[f"{source}.weight"].reshape(len(w), -1)), target
        assert np.array_equal(b, state[f"{source}.bias"]), target
    assert net.fc6.weight.shape == (48, 32, 7, 7) and net.fc7.weight.shape == (48, 48, 1, 1)
    assert not net.score_fr.weight.data.any() and not net.score_pool3.weight.data.any()
    # On a 224-pixel image, pool5 is 7x7, and fc7 at the centre of the map is the classifier's fc7.
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    net.eval()
    with no_grad():
        relu7, _ = net.run(Tensor(x), net.path[:net.path.index("relu7") + 1])
        pool5, _ = net.run(Tensor(x), net.path[:net.path.index("pool5") + 1])
    with torch.no_grad():
        t_pool5 = vgg.features(torch.tensor(x))
        t_fc7 = vgg.classifier[:5](t_pool5.flatten(1))
    np.testing.assert_allclose(pool5.data, t_pool5.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(relu7.data[0, :, 3, 3], t_fc7.numpy()[0], rtol=1e-4, atol=1e-4)


@pytest.mark.torch
def test_a_vgg16_of_other_widths_is_refused_naming_the_tensor(tmp_path):
    torch = needs_torch()
    torch.save(torch_vgg16(torch, (4, 8, 16, 32, 32), 48).state_dict(), tmp_path / "vgg16.pth")
    state = state_dict_of(load_pth(tmp_path / "vgg16.pth"))
    with pytest.raises(ValueError, match=r"features\.0\.weight has shape \(4, 3, 3, 3\).*conv1_1"):
        FCN8s(width=1 / 8, fc_width=48).load_vgg16(state)
    with pytest.raises(ValueError, match=r"classifier\.0\.weight"):
        FCN8s(width=1 / 16, fc_width=64).load_vgg16(state)


@pytest.mark.torch
def test_a_vgg16_initialised_fcn8s_trains_one_step(tmp_path):
    torch = needs_torch()
    from minifcn.data import synthesize
    from minifcn.train import TrainConfig, load_checkpoint, train
    torch.manual_seed(1)
    vgg = torch_vgg16(torch, (4, 8, 16, 32, 32), 48)
    torch.save(vgg.state_dict(), tmp_path / "vgg16.pth")
    data = synthesize(str(tmp_path / "data"), 4, 2, 32, progress=False)
    config = TrainConfig(data=data, out=str(tmp_path / "run"), model="fcn8s", width=1 / 16, fc_width=48,
                         input_mode="pad32", epochs=1, batch_size=4, lr=1e-3, optimizer="adam",
                         init=str(tmp_path / "vgg16.pth"), val_every=0)
    lines = []
    model, metrics = train(config, progress=False, log=lines.append)
    assert any("copied 30 tensors" in line for line in lines), lines  # 13 convolutions + fc6 + fc7, weight and bias
    assert np.isfinite(metrics["loss"]) and metrics["step"] == 1
    start = vgg.state_dict()["features.0.weight"].numpy()
    assert not np.array_equal(model.conv1_1.weight.data, start)  # it trained
    assert np.abs(model.conv1_1.weight.data - start).max() < 0.01  # one small step from VGG16
    assert load_checkpoint(os.path.join(config.out, "checkpoint.npz"))[0].init.endswith("vgg16.pth")


@pytest.mark.torch
@pytest.mark.parametrize("wrapped", [False, True])
def test_pytorch_fcn_files_import_and_score_as_in_pytorch(tmp_path, wrapped, capsys):
    torch = needs_torch()
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
    from torch_reference import TorchFCN8s
    torch.manual_seed(0)
    ref = TorchFCN8s(5, (4, 8, 16, 32, 32), 32).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.2)
    state = ref.state_dict()
    obj = {"epoch": 3, "iteration": 900, "model_state_dict": state, "best_mean_iu": np.float64(0.61)} if wrapped \
        else state
    torch.save(obj, tmp_path / "fcn8s.pth", _use_new_zipfile_serialization=not wrapped)
    out = tmp_path / "fcn8s.npz"
    assert main(["weights", "import", str(tmp_path / "fcn8s.pth"), "--out", str(out), "--preprocess", "imagenet"]) == 0
    assert "fcn8s with 5 classes, width 0.0625" in capsys.readouterr().out
    assert main(["weights", "import", str(tmp_path / "fcn8s.pth"), "--out", str(out)]) == 2  # never overwrites
    assert "exists" in capsys.readouterr().err
    from minifcn.train import load_checkpoint
    config, mine, _ = load_checkpoint(str(out))
    x = np.random.default_rng(0).standard_normal((1, 3, 40, 52)).astype(np.float32)
    mine.eval()
    with no_grad():
        ours = mine(Tensor(x)).data
    want = ref(torch.tensor(x)).detach().numpy()
    np.testing.assert_allclose(ours, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())  # float32 sums


def test_caffe_preprocessing_is_bgr_minus_the_mean():
    from minifcn.data import denormalize, normalize
    image = np.random.default_rng(0).integers(0, 256, (4, 5, 3)).astype(np.uint8)
    x = normalize(image, "caffe")
    np.testing.assert_allclose(x[0], image[..., 2] - 104.00698793, rtol=1e-6)  # channel 0 is blue
    np.testing.assert_allclose(x[2], image[..., 0] - 122.67891434, rtol=1e-6)
    assert np.array_equal(denormalize(x, "caffe"), image)
    with pytest.raises(ValueError, match="'bgr'"):
        normalize(image, "bgr")


def test_a_legacy_file_claiming_more_elements_than_it_holds_is_refused_before_allocating(tmp_path):
    torch = needs_torch()
    path = tmp_path / "small.pth"
    torch.save({"w": torch.zeros(3)}, path, _use_new_zipfile_serialization=False)
    raw = bytearray(path.read_bytes())
    count = raw.rfind((3).to_bytes(8, "little"))  # the storage's element count, just before its 12 bytes
    raw[count:count + 8] = (10 ** 15).to_bytes(8, "little")
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="claims 1000000000000000 elements, more than the file holds"):
        load_pth(path)


def test_a_tensor_reaching_past_its_storage_is_refused_naming_the_file(tmp_path):
    torch = needs_torch()
    path = tmp_path / "bad.pth"
    torch.save({"w": torch.zeros(4)}, path)
    with zipfile.ZipFile(path) as z:
        records = {n: z.read(n) for n in z.namelist()}
    pkl = next(n for n in records if n.endswith("data.pkl"))
    assert records[pkl].count(b"K\x04\x85") == 1  # the size tuple (4,): BININT1 4, TUPLE1
    records[pkl] = records[pkl].replace(b"K\x04\x85", b"K\x64\x85")  # now (100,), over a storage of 4
    with zipfile.ZipFile(path, "w") as z:
        for name, data in records.items():
            z.writestr(name, data)
    with pytest.raises(ValueError, match=f"{path}.*reaches past its storage"):
        load_pth(path)


# --- files that poison, bomb or alias (hand-built with tests/forge.py; no torch needed) ----------------------

def _clean(tmp_path):
    rng = np.random.default_rng(3)
    arrays = {"conv1_1.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
              "conv1_1.bias": rng.standard_normal(4).astype(np.float32)}
    return forge.state_dict_file(tmp_path / "clean.pth", arrays), arrays


POISONS = {  # a BUILD aimed at something of the reader's: each would change every later load
    "storage type": forge.glob("torch", "FloatStorage") + forge.dict_(dtype=forge.call(
        forge.glob("numpy", "dtype"), forge.text("i4"))) + forge.BUILD,
    "storage type, slot state": forge.glob("torch", "FloatStorage") + forge.tuple_(b"N", forge.dict_(
        name=forge.text("IntStorage"))) + forge.BUILD,
    "rebuild function": forge.glob("torch._utils", "_rebuild_tensor_v2") + forge.tuple_(b"N", forge.dict_(
        __defaults__=forge.tuple_(forge.integer(1)))) + forge.BUILD,
    "numpy's shared dtype through a scalar": forge.call(forge.glob("numpy", "dtype"), forge.text("f4"),
                                                        b"\x89", b"\x89") + forge.dict_(x=forge.integer(1))
    + forge.BUILD,
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("poison", POISONS)
def test_a_file_cannot_change_how_later_files_load(tmp_path, fmt, poison):
    path, arrays = _clean(tmp_path)
    body = POISONS[poison] + forge.POP + forge.dict_(w=forge.integer(1))
    hostile_file(tmp_path / "evil.pth", forge.program(body), fmt)
    with pytest.raises(ValueError, match="refused to set the state"):
        load_pth(tmp_path / "evil.pth")
    got = load_pth(path)
    assert list(got) == list(arrays)
    for name, want in arrays.items():
        assert got[name].dtype == np.float32 and np.array_equal(got[name], want), name  # bit for bit
    assert np.dtype("f4").byteorder == "=" and np.dtype("f4").itemsize == 4


def test_a_state_dict_may_still_carry_its_metadata(tmp_path):
    """torch.save(model.state_dict()) BUILDs its OrderedDict with ``_metadata``: that one is allowed."""
    meta = forge.dict_(_metadata=forge.dict_(version=forge.integer(1)))
    body = forge.call(forge.glob("collections", "OrderedDict")) + forge.MARK + forge.text("w") + \
        forge.tensor("0", (2,)) + forge.SETITEMS + meta + forge.BUILD
    path = forge.write_zip(tmp_path / "sd.pth", forge.program(body), {"0": np.array([1.5, -2], "<f4")})
    got = load_pth(path)
    assert isinstance(got, collections.OrderedDict) and got._metadata == {"version": 1}
    assert np.array_equal(got["w"], [1.5, -2])


def test_one_tensor_named_many_times_is_one_shared_array(tmp_path):
    body = forge.tensor("0", (1000,)) + forge.put(1) + forge.POP + forge.list_(*[forge.get(1)] * 50)
    path = forge.write_zip(tmp_path / "alias.pth", forge.program(body), {"0": np.arange(1000, dtype="<f4")})
    got = load_pth(path, max_bytes=8000)  # 50 copies would need 200,000 bytes
    assert len(got) == 50 and all(a is got[0] for a in got) and np.array_equal(got[0], np.arange(1000))


def test_an_alias_bomb_is_refused_before_it_allocates(tmp_path):
    """Each stride-0 view of one float asks for 2**26 elements (256 MB); twenty of them, 5 GB."""
    views = [forge.tensor("0", (1 << 13, 1 << 13), stride=(0, 0), numel=1) for _ in range(20)]
    path = forge.write_zip(tmp_path / "bomb.pth", forge.program(forge.list_(*views)), {"0": np.ones(1, "<f4")})
    with pytest.raises(ValueError, match=r"bomb\.pth: its tensors would take more than 2,147,483,648 bytes.*"
                                         r"max_bytes"):
        load_pth(path)
    with pytest.raises(ValueError, match="more than 1,000 bytes"):
        load_pth(path, max_bytes=1000)


def test_a_size_whose_product_overflows_int64_is_still_counted(tmp_path):
    """2**32 x 2**32 is 2**64 elements: 0 in int64 arithmetic, which would slip under every bound."""
    body = forge.tensor("0", (1 << 32, 1 << 32), stride=(0, 0), numel=1)
    path = forge.write_zip(tmp_path / "wrap.pth", forge.program(body), {"0": np.ones(1, "<f4")})
    with pytest.raises(ValueError, match="repeats its 1 stored elements"):
        load_pth(path)


def test_a_compressed_record_is_refused_before_it_inflates(tmp_path):
    numel = 1 << 22  # 16 MB of zeros deflate to 16 KB
    path = forge.write_zip(tmp_path / "deflate.pth", forge.program(forge.tensor("0", (numel,))),
                           {"0": np.zeros(numel, "<f4")}, compress={"0"})
    assert os.path.getsize(path) < 100_000
    with pytest.raises(ValueError, match=r"deflate\.pth: record archive/data/0 is compressed"):
        load_pth(path)


def test_a_container_that_holds_itself_is_one_clear_error(tmp_path):
    body = forge.EMPTY_LIST + forge.put(1) + forge.MARK + forge.get(1) + forge.APPENDS
    path = forge.write_zip(tmp_path / "loop.pth", forge.program(body), {})
    with pytest.raises(ValueError, match=r"loop\.pth.*holds itself"):
        load_pth(path)
