"""Full-width vectors: the feature string minifcn gives Numba, the user's own choice kept, and a Numba cache
that never serves a kernel built for one CPU to another."""

import json
import os
import subprocess
import sys

import pytest

from minifcn import cpu

AVX512 = "+sse2,+avx,+avx2,+fma,+avx512f,+avx512bw,-amx-tile"
AVX2 = "+sse2,+avx,+avx2,+fma,-avx512f"


def test_prefer_256_is_dropped_only_where_avx512_exists():
    assert cpu.full_width_features(AVX512) == AVX512 + ",-prefer-256-bit"
    assert cpu.full_width_features(AVX2) == AVX2
    once = cpu.full_width_features(AVX512)
    assert cpu.full_width_features(once) == once


def test_vector_width_reads_the_feature_string(monkeypatch):
    monkeypatch.setattr(cpu, "host", lambda: ("rocketlake", ""))
    assert cpu.vector_width(AVX512 + ",-prefer-256-bit") == (512, 16)
    assert cpu.vector_width(AVX512) == (256, 8)  # LLVM's tuning for this Intel core prefers ymm
    assert cpu.vector_width(AVX512 + ",-prefer-256-bit", dtype_bytes=8) == (512, 8)
    assert cpu.vector_width(AVX2) == (256, 8)
    assert cpu.vector_width("+sse2,+sse4.1") == (128, 4)
    monkeypatch.setattr(cpu, "host", lambda: ("znver4", ""))
    assert cpu.vector_width(AVX512) == (512, 16)  # Zen 4 is tuned for zmm already


def _features_in_child(env, code="import minifcn"):
    """The feature string Numba compiles with, in a fresh process that runs ``code`` first."""
    script = code + "; from minifcn import cpu; import json; print(json.dumps(cpu.compiled_features()))"
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _clean_env():
    return {k: v for k, v in os.environ.items() if k not in ("NUMBA_CPU_FEATURES", "NUMBA_CPU_NAME")}


def test_numba_compiles_for_the_host_at_full_width_in_any_import_order():
    _, host_features = cpu.host()
    expected = cpu.full_width_features(host_features)
    assert _features_in_child(_clean_env()) == expected
    assert _features_in_child(_clean_env(), "import numpy, numba; import minifcn") == expected


def test_a_feature_string_the_user_set_is_kept():
    mine = "+sse2,+avx,+avx2,+fma"
    assert _features_in_child({**_clean_env(), "NUMBA_CPU_FEATURES": mine}) == mine


CACHE_PROBE = r"""
import json, numpy as np, minifcn
from minifcn.kernels import numba_cpu
numba_cpu.relu(np.ones((1, 1, 4, 4), np.float32))
print(json.dumps(sum(numba_cpu._relu.stats.cache_hits.values())))
"""


@pytest.mark.parametrize("other", [{"NUMBA_CPU_NAME": "generic", "NUMBA_CPU_FEATURES": ""},
                                   {"NUMBA_CPU_NAME": "x86-64-v3", "NUMBA_CPU_FEATURES": "+sse2,+avx,+avx2,+fma"}])
def test_the_numba_cache_never_serves_another_cpus_kernel(tmp_path, other):
    def hits(extra):
        env = {**_clean_env(), "NUMBA_CACHE_DIR": str(tmp_path), **extra}
        out = subprocess.run([sys.executable, "-c", CACHE_PROBE], env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    assert hits({}) == 0  # compiled and written to the empty cache
    assert hits({}) == 1  # the same CPU loads it
    assert hits(other) == 0  # another CPU (or feature string) compiles its own


AVX2_PROBE = r"""
import json, numpy as np, minifcn
from minifcn import cpu
from minifcn.kernels import numba_tiled, reference
rng = np.random.default_rng(0)
x, w = rng.standard_normal((2, 5, 13, 37)).astype(np.float32), rng.standard_normal((11, 5, 3, 3)).astype(np.float32)
y = numba_tiled.conv2d(x, w, (1, 1), (1, 1), rows=2)
g = rng.standard_normal(y.shape).astype(np.float32)
dw = numba_tiled.conv2d_weight_grad(g, x, w.shape, (1, 1), (1, 1))
print(json.dumps({"width": numba_tiled.WIDTH, "bits": cpu.vector_width(cpu.compiled_features())[0],
                  "y": float(abs(y - reference.conv2d(x, w, 1, 1)).max()),
                  "dw": float(abs(dw - reference.conv2d_weight_grad(g, x, w.shape, 1, 1)).max())}))
"""


def test_an_avx2_machine_gets_tiles_one_ymm_register_wide(tmp_path):
    """Compiled as for a CPU without AVX-512 (this host's features, its AVX-512 ones switched off)."""
    _, features = cpu.host()
    if "+avx2" not in features.split(","):
        pytest.skip("needs an x86 CPU with AVX2 to run AVX2 code; this one has none")
    avx2 = ",".join(f"-{f[1:]}" if f.startswith("+avx512") else f for f in features.split(","))
    env = {**_clean_env(), "NUMBA_CPU_FEATURES": avx2, "NUMBA_CACHE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", AVX2_PROBE], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["bits"] == 256 and report["width"] == 8
    assert report["y"] < 1e-4 and report["dw"] < 1e-3


def test_a_host_whose_features_llvm_cannot_read_leaves_numba_alone(monkeypatch):
    import llvmlite.binding as llvm

    def unreadable():
        raise RuntimeError("failed to get host cpu features")
    monkeypatch.setattr(llvm, "get_host_cpu_features", unreadable)
    monkeypatch.delenv("NUMBA_CPU_FEATURES", raising=False)
    monkeypatch.delenv("NUMBA_CPU_NAME", raising=False)
    assert cpu.host()[1] == "" and cpu.use_full_width() is None
    assert "NUMBA_CPU_FEATURES" not in os.environ
