"""Freed memory kept in the process, so that each training step does not start on fresh pages.

Every step allocates the same arrays again: activations, gradients, padded copies, columns. glibc's
malloc serves a block over its mmap threshold (128 KiB, raised as such blocks are freed, to at most
32 MiB) straight from the kernel and returns it on free, and it trims the top of its heap whenever more
than twice that threshold lies free there. Memory fresh from the kernel costs a page fault on the first
touch of each 4 KiB page, in whichever thread touches it first. Measured on a 2-core AMD Zen 4, per
step: the Tiny ImageNet classifier (batch 64) 3,700 faults and 18 ms of kernel time, the small FCN-8s
(pad 100) 10,900 faults and 74-97 ms. PyTorch keeps freed blocks in a caching allocator of its own.

minifcn asks glibc for the same at import (``mallopt``): blocks under 1 GiB come from the heap, and up
to 1 GiB of free heap is kept for the next step instead of going back to the kernel. Both fault counts
above fall below 130 per step. That is process-wide: the rest of the program allocates the same way.

Why 1 GiB and not less: a step's largest arrays grow with the photos. FCN-32s on SIFT Flow's 256 x 256
photos (batch 8, scale augmentation) makes 69 MB score maps and up to 128 MiB of im2col columns, and
with the first thresholds chosen here (64 MiB, 256 MiB) its steps still spent 21 % of their CPU time in
the kernel (8,500 faults a step, 2 MB huge pages zeroed); with 1 GiB, under 2 %. The price is the
heap's fragmentation when sizes change from step to step: that run's peak went from 1,046 to 1,281 MB
over 40 steps. With the same sizes every step, as in benchmarks/speed.py, peak memory barely moves.

Left as it is where the user has tuned malloc (``MALLOC_*_`` variables or ``GLIBC_TUNABLES`` with
``glibc.malloc``), where ``MINIFCN_KEEP_MEMORY=0``, and on C libraries other than glibc.
"""

import os

MMAP_THRESHOLD = 1 << 30  # blocks at least this big still come straight from the kernel
TRIM_THRESHOLD = 1 << 30  # free heap kept before glibc gives the top back
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (glibc's malloc.h)
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_",
                 "MALLOC_ARENA_MAX")


def why_not(environ=os.environ):
    """Why the allocator is left as it is (a sentence), or None where minifcn may tune it."""
    if environ.get("MINIFCN_KEEP_MEMORY", "1").strip().lower() in ("0", "false", "no", "off"):
        return "MINIFCN_KEEP_MEMORY is off"
    chosen = [name for name in USER_SETTINGS if name in environ]
    if "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""):
        chosen.append("GLIBC_TUNABLES")
    if chosen:
        return f"the user set {', '.join(chosen)}"
    try:
        libc = os.confstr("CS_GNU_LIBC_VERSION")
    except (AttributeError, ValueError, OSError):
        libc = None
    if not libc or not libc.startswith("glibc"):
        return "the C library is not glibc"
    return None


def keep_freed_memory(environ=os.environ):
    """Apply the thresholds above unless ``why_not`` objects; returns None when applied, else the reason."""
    reason = why_not(environ)
    if reason is None:
        import ctypes
        mallopt = ctypes.CDLL(None).mallopt
        # Some glibc versions refuse an mmap threshold over 32 MiB (their DEFAULT_MMAP_THRESHOLD_MAX): then 32.
        if not (mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
                and any(mallopt(_M_MMAP_THRESHOLD, size) for size in (MMAP_THRESHOLD, 64 << 20, 32 << 20))):
            reason = "glibc refused mallopt"
    global STATE
    STATE = reason
    return reason


STATE = "not applied yet"  # what keep_freed_memory last did (None: applied), for benchmarks and bug reports
