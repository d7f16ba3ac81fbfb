"""Stopping a run cleanly: `kill` and a cluster's scheduler stop it as Ctrl-C does, and never mid-step.

A training loop checkpoints when it sees KeyboardInterrupt, so a resumed run continues exactly where the
stopped one was. Two things could break that promise:

* SIGTERM, which ``kill``, ``timeout`` and batch schedulers (Slurm, before a job's time runs out) send,
  ends Python at once by default: no checkpoint, no cleanup. ``terminate_as_interrupt`` turns it into
  KeyboardInterrupt while a run trains.
* A signal that lands inside an optimiser step, between two parameters of an Adam update, leaves some
  weights one step ahead of the others and of the step counter; the checkpoint written then resumes into
  another run than the uninterrupted one. ``whole`` holds both signals back while a step runs and delivers
  them as soon as it is complete.

Both act only in the main thread (the only one where Python runs signal handlers) and leave alone a
signal the process ignores (SIG_IGN, as a shell does for Ctrl-C in background jobs) or one whose handler
was not set from Python (it could not be put back).
"""

import contextlib
import signal
import threading

STOPPING = (signal.SIGINT, signal.SIGTERM)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _ours(signum):
    """Whether this signal's handling may be changed here and put back afterwards."""
    return threading.current_thread() is threading.main_thread() and signal.getsignal(signum) not in (
        signal.SIG_IGN, None)


@contextlib.contextmanager
def terminate_as_interrupt():
    """While the block runs, SIGTERM raises KeyboardInterrupt, so the run checkpoints and stops as on Ctrl-C."""
    if not _ours(signal.SIGTERM):
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def whole():
    """Hold SIGINT and SIGTERM back while the block runs; deliver them, to their own handlers, right after it."""
    caught = []
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in STOPPING if _ours(s)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(caught):  # each once, in the order they came
            signal.raise_signal(s)
