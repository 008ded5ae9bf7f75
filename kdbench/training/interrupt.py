"""SIGTERM and SIGINT: stop at a point a run can continue from, say so, and exit non-zero (143 and 130).

SIGTERM is what SLURM and most schedulers send at a time limit or a preemption; SIGINT is Ctrl-C. Inside
`handle_signals()` either one raises RunInterrupted (a BaseException, like KeyboardInterrupt, so that no
`except Exception` swallows it) where the run stands: loading, evaluating, generating. During training the
handler only records the signal, and the ResumeCheckpoint callback (kdbench.training.resume) saves the whole
training state at the end of the current step (after its validation, when one is due) and then raises, so the
rerun continues from that step instead of from the last periodic checkpoint. A second SIGINT while a step is
still running stops at once (the previous checkpoint stays), as a second Ctrl-C does everywhere.

Lightning installs its own SIGTERM handler at the start of fit, which makes the loop raise SIGTERMException
before a validation due at that step has run; `take_over_in_training` puts this one back for the duration of
training (Lightning restores the previous handlers at teardown), so that there is one rule for both signals.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading

log = logging.getLogger("kdbench.train")
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunInterrupted(BaseException):
    """The run stopped on a signal. `resume_file`: where training can continue from (None: nothing saved by
    this process, a rerun continues from whatever an earlier checkpoint holds)."""

    def __init__(self, signum: int, step: int | None = None, max_steps: int | None = None,
                 resume_file: str | None = None):
        self.signum, self.step, self.max_steps, self.resume_file = signum, step, max_steps, resume_file
        super().__init__(self.describe())

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 143 for SIGTERM, 130 for SIGINT

    def describe(self) -> str:
        where = f" at step {self.step}/{self.max_steps}" if self.step is not None else ""
        saved = f"; training state saved to {self.resume_file}" if self.resume_file else ""
        return f"interrupted by {self.signal_name}{where}{saved}"


class _State:
    def __init__(self):
        self.active = False  # inside handle_signals()
        self.training = False  # a ResumeCheckpoint will stop at the end of the step
        self.pending: int | None = None


_state = _State()


def _handler(signum, frame):
    if not _state.training:
        raise RunInterrupted(signum)
    if _state.pending == signal.SIGINT and signum == signal.SIGINT:
        raise RunInterrupted(signum)  # a second Ctrl-C: stop now, the previous checkpoint stays
    if _state.pending is None:
        _state.pending = signum
        log.warning("received %s: stopping after this training step, saving where to continue from",
                    signal.Signals(signum).name)


@contextlib.contextmanager
def handle_signals():
    """Turn SIGTERM and SIGINT into RunInterrupted for the duration of a run (main thread only: Python runs
    signal handlers there; elsewhere this does nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _state.active, _state.training, _state.pending = True, False, None
    for s in SIGNALS:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _state.active, _state.training, _state.pending = False, False, None


def take_over_in_training() -> None:
    """Called when training starts (after Lightning registered its handlers): signals are recorded, not raised."""
    if not _state.active or threading.current_thread() is not threading.main_thread():
        return
    for s in SIGNALS:
        signal.signal(s, _handler)
    _state.training = True


def training_ended() -> None:
    _state.training = False


def pending_signal() -> int | None:
    return _state.pending


# ----------------------------------------------------------------- sweep workers outlive no parent

def exit_with_parent(poll_s: float = 1.0, grace_s: float = 600.0) -> None:
    """In a sweep worker: SIGTERM this process when its parent (the sweep) dies, so that `kill -9` of a sweep
    leaves no orphaned workers; the worker then saves its training state and stops like any interrupted run, and
    exits once the run has unwound (an idle worker pool would otherwise keep it alive with nothing to serve).
    A thread that polls the parent pid (re-parenting changes it), not prctl(PR_SET_PDEATHSIG), which fires
    when the parent *thread* that forked the worker ends and is Linux-only. Started once per process."""
    global _watchdog
    if _watchdog is not None:
        return
    parent = os.getppid()

    def watch():
        import time

        while os.getppid() == parent:
            time.sleep(poll_s)
        log.warning("the sweep that started this worker (pid %d) is gone: stopping", parent)
        os.kill(os.getpid(), signal.SIGTERM)  # not inside a run: the default action ends the process here
        deadline = time.monotonic() + grace_s
        while _state.active and time.monotonic() < deadline:  # the run saves, records and unwinds
            time.sleep(0.2)
        logging.shutdown()
        os._exit(128 + signal.SIGTERM)

    _watchdog = threading.Thread(target=watch, name="kdbench-exit-with-parent", daemon=True)
    _watchdog.start()


_watchdog: threading.Thread | None = None
