"""Data parallelism over MPI: N ranks train the model one process trains, split evaluation is exact, and a
failed or killed rank stops the job with one line and an intact checkpoint.

The multi-rank tests launch ``mpiexec -n 2`` (the 'mpi' extra brings mpi4py and MPICH). Where the extra
is missing they are skipped, saying so -- except in CI, where they must run.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from minifcn import Tensor, distributed, nn
from minifcn import functional as F
from minifcn.checkpoint import read_checkpoint
from minifcn.data import synthesize

BIN = os.path.dirname(sys.executable)
MPIEXEC = shutil.which("mpiexec", path=BIN) or shutil.which("mpiexec")


def needs_mpi():
    try:
        import mpi4py  # noqa: F401
        missing = None if MPIEXEC else "no mpiexec on the PATH"
    except ImportError:
        missing = "mpi4py is not installed"
    if missing and os.environ.get("CI"):
        pytest.fail(f"CI must run the multi-rank tests: {missing} (install the 'mpi' extra)")
    if missing:
        pytest.skip(f"{missing}: multi-rank tests need the 'mpi' extra (pip install -e '.[mpi]')")


# --- the pieces, in one process ------------------------------------------------------------------------------

class Rank(distributed.World):
    def __init__(self, rank, size):
        self.rank, self.size = rank, size


@pytest.mark.parametrize("n, size", [(8, 2), (7, 3), (2, 2), (5, 5), (1, 3)])
def test_the_ranks_rows_partition_the_batch(n, size):
    parts = [Rank(r, size).rows(n) for r in range(size)]
    assert parts[0].start == 0 and parts[-1].stop == n
    assert all(a.stop == b.start for a, b in zip(parts, parts[1:]))
    lengths = [p.stop - p.start for p in parts]
    assert max(lengths) - min(lengths) <= 1


@pytest.mark.parametrize("size", [2, 3])
def test_dropout_shards_keep_the_rows_of_the_whole_batchs_mask(size):
    x = Tensor(np.ones((6, 4, 3, 3), np.float32))
    whole = nn.Dropout(0.5)
    whole.generator = np.random.default_rng([7, 1])
    want = whole(x).data
    for r in range(size):
        rows = Rank(r, size).rows(6)
        part = nn.Dropout(0.5)
        part.generator, part.shard = np.random.default_rng([7, 1]), (rows.start, 6)
        assert np.array_equal(part(Tensor(x.data[rows])).data, want[rows])


@pytest.mark.parametrize("weighted", [False, True])
def test_shard_losses_over_the_global_denominator_add_up_to_the_batch_mean(weighted):
    rng = np.random.default_rng(0)
    z = rng.standard_normal((5, 3, 4, 4)).astype(np.float32)
    t = rng.integers(0, 3, (5, 4, 4))
    t[0, :2] = 255
    weight = np.array([0.5, 2.0, 1.0], np.float32) if weighted else None
    whole = Tensor(z, requires_grad=True)
    loss = F.softmax_cross_entropy(whole, t, weight=weight)
    loss.backward()
    total, grads = 0.0, []
    for r in range(2):
        rows = Rank(r, 2).rows(5)
        part = Tensor(z[rows], requires_grad=True)
        piece = F.softmax_cross_entropy(part, t[rows], weight=weight, denominator=F.pixel_weight(t, weight))
        piece.backward()
        total += piece.item()
        grads.append(part.grad)
    assert abs(total - loss.item()) < 1e-6
    np.testing.assert_allclose(np.concatenate(grads), whole.grad, rtol=1e-6, atol=1e-8)


def test_importing_minifcn_never_imports_mpi4py():
    code = "import sys, minifcn, minifcn.cli, minifcn.train; print('mpi4py' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_an_mpi_launch_without_mpi4py_is_one_clear_line(tmp_path):
    """A process that a launcher started as one of two, without mpi4py: refused, not trained alone."""
    code = ("import sys; sys.modules['mpi4py'] = None\nfrom minifcn.cli import main\n"
            "sys.exit(main(['train', '--data', sys.argv[1], '--out', sys.argv[2]]))")
    data = synthesize(str(tmp_path / "data"), 2, 1, 32, progress=False)
    done = subprocess.run([sys.executable, "-c", code, data, str(tmp_path / "run")], capture_output=True, text=True,
                          env={**os.environ, "PMI_SIZE": "2", "PMI_RANK": "0"}, timeout=120)
    assert done.returncode == 2 and "one of 2 that an MPI launcher started, but mpi4py is not installed" in done.stderr


# --- N ranks against one process -------------------------------------------------------------------------

ENV = {**os.environ, "MINIFCN_BACKEND": "numpy"}  # no compile time in each new process
TINY = ["--width", "0.0625", "--fc-width", "16", "--input-mode", "pad32", "--crop", "32", "--model", "fcn8s"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthesize(str(tmp_path_factory.mktemp("voc")), 40, 6, 40, progress=False)


def minifcn(*args, ranks=1, script=None, timeout=600, check=True):
    command = [os.path.join(BIN, "python"), *(["-c", script] if script else ["-m", "minifcn.cli"]), *map(str, args)]
    if ranks > 1:
        command = [MPIEXEC, "-n", str(ranks), *command]
    done = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=timeout)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def errors(stderr):
    """minifcn's error lines (another rank's progress bar may share a line with one)."""
    return re.findall(r"minifcn: error: .*", stderr)


def weights(out, name="checkpoint.npz", kind=None):
    return read_checkpoint(os.path.join(out, name), config_class=kind)[1]


def max_difference(a, b):
    return max(float(np.abs(a["model"][k].astype(np.float64) - b["model"][k]).max()) for k in a["model"])


def train_args(data, out, *more):
    return ["train", "--data", data, "--out", out, *TINY, "--batch-size", "4", "--optimizer", "sgd", "--lr", "0.01",
            *more]


@pytest.mark.mpi
def test_two_ranks_take_the_steps_one_process_takes(data, tmp_path):
    needs_mpi()
    args = ("--epochs", "2", "--checkpoint-every", "5")  # 40 images / batch 4: 20 SGD steps, dropout on
    minifcn(*train_args(data, tmp_path / "one", *args))
    minifcn(*train_args(data, tmp_path / "two", *args), ranks=2)
    one, two = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert one["meta"]["step"] == two["meta"]["step"] == 20 and two["meta"]["ranks"] == 2
    assert max_difference(one, two) <= 1e-5
    logs = [(tmp_path / name / "metrics.jsonl").read_text().splitlines() for name in ("one", "two")]
    assert len(logs[0]) == len(logs[1]) == 2  # rank 0 alone wrote the log


@pytest.mark.mpi
def test_a_split_evaluation_gives_one_process_metrics_exactly(data, tmp_path):
    needs_mpi()
    minifcn(*train_args(data, tmp_path / "run", "--epochs", "1", "--val-every", "0"))
    checkpoint = tmp_path / "run" / "checkpoint.npz"
    alone = minifcn("eval", "--checkpoint", checkpoint).stdout
    split = minifcn("eval", "--checkpoint", checkpoint, ranks=2).stdout
    assert "mean IU" in alone and split == alone  # printed once, by rank 0, with the same digits


STOP_AFTER_10_STEPS = """
import sys
from minifcn.cli import config_from, parser
from minifcn.train import train
train(config_from(parser().parse_args(sys.argv[1:])), resume=True, max_steps=10, progress=False)
"""


@pytest.mark.mpi
@pytest.mark.parametrize("first, then", [(2, 1), (1, 2)])
def test_a_run_resumes_on_another_number_of_ranks(data, tmp_path, first, then):
    needs_mpi()
    args = ("--epochs", "2")
    minifcn(*train_args(data, tmp_path / "straight", *args))
    minifcn(*train_args(data, tmp_path / "moved", *args), ranks=first, script=STOP_AFTER_10_STEPS)
    assert weights(tmp_path / "moved")["meta"]["step"] == 10
    minifcn(*train_args(data, tmp_path / "moved", *args, "--resume"), ranks=then)
    assert weights(tmp_path / "moved")["meta"]["step"] == 20
    assert max_difference(weights(tmp_path / "straight"), weights(tmp_path / "moved")) <= 1e-5


@pytest.mark.mpi
def test_pretraining_on_two_ranks_equals_one_process(data, tmp_path):
    needs_mpi()
    args = ["--data", data, "--width", "0.0625", "--fc-width", "16", "--crop", "32", "--epochs", "2",
            "--batch-size", "6", "--crops-per-image", "2"]  # 80 crops in batches of 6: a short last batch
    minifcn("pretrain", *args, "--out", tmp_path / "one")
    minifcn("pretrain", *args, "--out", tmp_path / "three", ranks=3)
    one, three = (weights(tmp_path / n, "classifier.npz", None) for n in ("one", "three"))
    assert max_difference(one, three) <= 1e-5
    assert [h["val_accuracy"] for h in one["meta"]["history"]] == [h["val_accuracy"] for h in three["meta"]["history"]]


FAIL_ON_RANK_1 = """
import sys
from minifcn import distributed, functional
from minifcn.cli import main
if distributed.world().rank == 1:
    real, calls = functional.softmax_cross_entropy, [0]
    def failing(*args, **kwargs):
        calls[0] += 1
        if calls[0] > 6:
            raise ValueError("injected failure")
        return real(*args, **kwargs)
    functional.softmax_cross_entropy = failing
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.mpi
def test_a_rank_that_raises_stops_every_rank_with_one_line(data, tmp_path):
    needs_mpi()
    started = time.time()
    done = minifcn(*train_args(data, tmp_path / "run", "--epochs", "5", "--checkpoint-every", "2"), ranks=2,
                   script=FAIL_ON_RANK_1, check=False, timeout=120)
    assert done.returncode != 0 and time.time() - started < 60
    ours = errors(done.stderr)
    assert ours == ["minifcn: error: rank 1 of 2: injected failure"], done.stderr
    assert weights(tmp_path / "run")["meta"]["step"] == 6  # the last checkpoint is intact


@pytest.mark.mpi
def test_an_error_every_rank_meets_is_said_once_by_rank_0(data, tmp_path):
    needs_mpi()
    done = minifcn(*train_args(data, tmp_path / "run", "--epochs", "1", "--lr", "-1"), ranks=2, check=False)
    ours = errors(done.stderr)
    assert done.returncode != 0 and ours == ["minifcn: error: rank 0 of 2: lr must be a finite number > 0, got -1.0"]


def _rank_pids(out):
    """{rank: pid} of the python processes training into ``out``."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if str(out).encode() in cmdline and not any(b"mpiexec" in part or b"hydra" in part for part in cmdline[:1]):
            rank = [e.split(b"=", 1)[1] for e in environ if e.startswith(b"PMI_RANK=")]
            if rank:
                found[int(rank[0])] = int(pid)
    return found


@pytest.mark.mpi
def test_killing_a_rank_ends_the_job_and_resume_is_bit_exact(data, tmp_path):
    needs_mpi()
    args = ("--epochs", "4", "--checkpoint-every", "3")
    minifcn(*train_args(data, tmp_path / "straight", *args), ranks=2)
    out = tmp_path / "broken"
    command = [MPIEXEC, "-n", "2", os.path.join(BIN, "python"), "-m", "minifcn.cli",
               *map(str, train_args(data, out, *args, "--resume"))]
    job = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline, step = time.time() + 120, 0
    while time.time() < deadline and job.poll() is None and step < 6:
        try:
            step = weights(out)["meta"]["step"]
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    pids = _rank_pids(out)
    assert job.poll() is None and set(pids) == {0, 1}, (job.poll(), pids)
    os.kill(pids[1], signal.SIGKILL)
    killed = time.time()
    said = job.communicate(timeout=30)[0]
    assert time.time() - killed < 10 and job.returncode != 0
    assert re.search(r"signal 9|Killed|lost contact with another rank", said), said  # the launcher's or ours
    assert 6 <= weights(out)["meta"]["step"] < 40  # intact, and from before the end
    minifcn(*train_args(data, out, *args, "--resume"), ranks=2)
    a, b = weights(tmp_path / "straight"), weights(out)
    assert a["meta"]["step"] == b["meta"]["step"] == 40
    assert all(np.array_equal(a["model"][k], b["model"][k]) for k in a["model"])  # bit for bit
    assert all(np.array_equal(a["optim"][k], b["optim"][k]) for k in a["optim"])


DRIFT_ON_RANK_1 = """
import sys
from minifcn import distributed, optim
from minifcn.cli import main
if distributed.world().rank == 1:
    real = optim.SGD.step
    def drifting(self):
        real(self)
        self.param_groups[0]["params"][0].data[0, 0, 0, 0] += 1e-3
    optim.SGD.step = drifting
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.mpi
def test_ranks_whose_weights_drift_apart_are_stopped(data, tmp_path):
    needs_mpi()
    done = minifcn(*train_args(data, tmp_path / "run", "--epochs", "1", "--checkpoint-every", "2"), ranks=2,
                   script=DRIFT_ON_RANK_1, check=False, timeout=120)
    ours = errors(done.stderr)
    assert done.returncode != 0 and len(ours) == 1 and "the weights after step 2 differ between ranks" in ours[0]
    assert not (tmp_path / "run" / "checkpoint.npz").exists()  # nothing written from drifted weights


@pytest.mark.gpu
def test_each_rank_takes_the_gpu_of_its_rank_modulo_the_device_count():
    from minifcn import backend
    if not backend.available("cupy"):
        pytest.skip("needs a CUDA GPU and CuPy (the gpu extra): rank r's device is r % device_count")
    import cupy
    before = backend.get_backend()
    backend.set_backend("cupy")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
        for rank in range(3):
            distributed.use_device_of(rank)
            assert cupy.cuda.Device().id == rank % count
    finally:
        cupy.cuda.Device(0).use()
        backend.set_backend(before)
