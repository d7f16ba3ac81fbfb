"""Freed memory kept for the next step (minifcn/memory.py): page faults counted in fresh processes, the
user's own malloc settings and the off switch respected."""

import os
import subprocess
import sys

import pytest

from minifcn import memory

GLIBC = memory.why_not({}) is None
FRESH = 5 * 2048  # at least one array's pages a round

# Eight 8 MiB arrays made, touched and freed five times after a first round. With glibc's defaults the
# heap's top is trimmed after each round and about 4,000 of its 16,384 pages are fresh again next round
# (20,000-odd faults here); with the memory kept, none are.
ROUNDS = r"""
import resource, sys
import numpy as np
if sys.argv[1] == "minifcn":
    import minifcn
mib, count = int(sys.argv[2]), int(sys.argv[3])
def round_of_arrays():
    arrays = [np.ones(mib << 18, np.float32) for _ in range(count)]
    del arrays
round_of_arrays()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    round_of_arrays()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(first, mib=8, count=8, **env):
    clean = {k: v for k, v in os.environ.items() if k not in memory.USER_SETTINGS and k != "MINIFCN_KEEP_MEMORY"}
    out = subprocess.run([sys.executable, "-c", ROUNDS, first, str(mib), str(count)], env={**clean, **env},
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's; this C library keeps its own defaults")
def test_importing_minifcn_keeps_freed_memory_for_the_next_round():
    assert _faults("numpy") > FRESH  # glibc's defaults: fresh pages every round
    assert _faults("minifcn") < 1000


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's; this C library keeps its own defaults")
def test_arrays_as_large_as_a_256px_steps_are_kept_too():
    # Three 96 MiB arrays a round: above the 64 MiB mmap threshold minifcn first chose, under which a
    # SIFT Flow step at 256 x 256 still faulted 8,500 times; fresh pages (many of them 2 MiB huge pages,
    # one fault each) every round with glibc's defaults.
    assert _faults("numpy", mib=96, count=3) > 2000
    assert _faults("minifcn", mib=96, count=3) < 1000


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's; this C library keeps its own defaults")
@pytest.mark.parametrize("env", [{"MINIFCN_KEEP_MEMORY": "0"}, {"MALLOC_TRIM_THRESHOLD_": "1000000"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1000000"}])
def test_the_off_switch_and_the_users_own_settings_are_respected(env):
    assert _faults("minifcn", **env) > FRESH


def test_why_not_names_the_reason():
    assert "MINIFCN_KEEP_MEMORY" in memory.why_not({"MINIFCN_KEEP_MEMORY": "off"})
    assert "MALLOC_TOP_PAD_" in memory.why_not({"MALLOC_TOP_PAD_": "0"})
    assert "GLIBC_TUNABLES" in memory.why_not({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=1"})
    assert memory.why_not({"GLIBC_TUNABLES": "glibc.pthread.rseq=0"}) == memory.why_not({})
