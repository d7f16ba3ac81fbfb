"""The host CPU as the compiler sees it, and the vector width minifcn's kernels compile to.

LLVM tunes several Intel AVX-512 cores (Skylake-X to Rocket Lake and Sapphire Rapids) with
``prefer-256-bit``: their first generations lowered the clock while 512-bit units ran, so the
vectorisers stop at 256-bit ymm registers even though the CPU has 512-bit zmm ones. A register tile
of 16 float32 pixels then takes two registers instead of one, and the 27 partial sums of the 3x3
weight gradient no longer fit the register file. Measured on a 2-core Intel Xeon that LLVM calls
``rocketlake`` (batch 8, 2 threads, the small net's 3x3 layers): forward 87-120 -> 124-168 GFLOP/s,
weight gradient 36-54 -> 71-108 GFLOP/s with full-width vectors.

So minifcn asks Numba, before Numba loads, for the host's own CPU features with ``-prefer-256-bit``
appended (``NUMBA_CPU_FEATURES``). That is Numba's process-wide setting: it also applies to the
user's own Numba functions in the same process. A value the user already set (``NUMBA_CPU_FEATURES``
or ``NUMBA_CPU_NAME``) is kept as it is. Numba keys its on-disk cache by CPU name and feature string
(``codegen.magic_tuple()``), so a kernel built for one CPU, or with other features, is never loaded
for another.

This module reads the environment and llvmlite only (no numpy, no numba): minifcn imports it first.
"""

import os
import sys

PREFER_256 = "-prefer-256-bit"


def host():
    """(LLVM's name for the host CPU, its feature string), or (None, "") where llvmlite is missing."""
    try:
        import llvmlite.binding as llvm
    except ImportError:
        return None, ""
    try:
        return llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten()
    except RuntimeError:  # LLVM cannot read the features on some hosts: Numba then chooses for itself
        return llvm.get_host_cpu_name(), ""


def full_width_features(features):
    """The feature string with ``-prefer-256-bit`` appended where the CPU has AVX-512 (else unchanged)."""
    flags = features.split(",")
    if "+avx512f" not in flags or PREFER_256 in flags:
        return features
    return ",".join(flags + [PREFER_256])


def use_full_width():
    """Set NUMBA_CPU_FEATURES to the host's features, full width, unless the user chose the CPU already.

    Returns the feature string now in force for Numba, or None where Numba chooses for itself. If Numba
    was imported earlier, the setting still reaches its compiler as long as nothing was compiled yet
    (Numba re-reads its environment before each compilation and builds its target machine once).
    """
    if os.environ.get("NUMBA_CPU_FEATURES") or os.environ.get("NUMBA_CPU_NAME"):
        return os.environ.get("NUMBA_CPU_FEATURES")
    name, features = host()
    if not features or full_width_features(features) == features:
        return None
    os.environ["NUMBA_CPU_FEATURES"] = full_width_features(features)
    if "numba" in sys.modules:
        sys.modules["numba"].config.reload_config()
    return os.environ["NUMBA_CPU_FEATURES"]


def vector_width(features, dtype_bytes=4):
    """(bits, lanes of dtype_bytes each) of the vectors LLVM compiles to with this feature string."""
    flags = set(features.split(","))
    if "+avx512f" in flags and "+prefer-256-bit" not in flags:
        tuned_256 = host()[0] in TUNED_256  # a feature string leaves the CPU's own tuning out
        bits = 512 if PREFER_256 in flags or not tuned_256 else 256
    elif "+avx" in flags:
        bits = 256
    else:
        bits = 128
    return bits, bits // (8 * dtype_bytes)


# The AVX-512 CPUs that LLVM's X86 backend tunes with prefer-256-bit (Intel's, Skylake-X on; AMD's Zen 4
# and Zen 5 use zmm without being asked).
TUNED_256 = {"skylake-avx512", "skx", "cascadelake", "cooperlake", "cannonlake", "icelake-client", "icelake-server",
             "rocketlake", "tigerlake", "sapphirerapids", "emeraldrapids", "graniterapids", "graniterapids-d",
             "diamondrapids"}


def compiled_features():
    """The feature string Numba's compiler really uses in this process (builds its target if needed)."""
    from numba.core.registry import cpu_target
    return cpu_target.target_context.codegen()._tm_features


def describe():
    """One line for benchmarks and bug reports: CPU, LLVM's name for it, vector width in use."""
    name, _ = host()
    bits, lanes = vector_width(compiled_features())
    return f"{model_name()} (LLVM: {name}), {bits}-bit vectors ({lanes} float32 lanes) in minifcn's kernels"


def model_name():
    """The CPU's marketing name from /proc/cpuinfo (Linux), else the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()
