"""Stopping on SIGTERM and SIGINT without losing work.

Cluster schedulers send SIGTERM before they kill (preemption, the end of a time limit) and users
press Ctrl-C. Within :class:`StopOnSignal` the first such signal only sets a flag; the training,
generation and evaluation loops look at it at their safe points (:meth:`StopOnSignal.requested`,
agreed by every process of a launch), save what they have and raise :class:`Stopped`, which the
scripts turn into one line and exit status 128 + the signal's number. A second signal stops the
process at once (the signal's default action), unless it comes within :data:`REPEAT_WINDOW_S` of
the first: launchers (``accelerate launch``, ``torchrun``) forward the signal they receive to the
processes that may have received it themselves, and that copy is the same request.
"""

from __future__ import annotations

import os
import signal
import threading
import time

SIGNALS = (signal.SIGTERM, signal.SIGINT)
REPEAT_WINDOW_S = 2.0


class Stopped(Exception):
    """A run stopped on a signal after saving its work. The message says where and how to go on
    (empty on the processes that leave the report to the main one); ``status`` is 128 + the
    signal's number, as a shell reports a process ended by that signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.status = 128 + signum


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class StopOnSignal:
    """Context manager catching SIGTERM and SIGINT (main thread only; elsewhere it catches nothing).

    ``on_stop``: what the program does when asked to stop, announced on stderr at the first signal
    by the main process of a launch, e.g. "finishing the current optimizer step, then saving".
    """

    def __init__(self, on_stop: str):
        self.on_stop = on_stop
        self.signum: int | None = None
        self._first_at = 0.0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in SIGNALS}
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        now = time.monotonic()
        if self.signum is None:
            self.signum, self._first_at = signum, now
            announce(f"{signal_name(signum)} received: {self.on_stop} (a second signal stops at once, "
                     f"without saving)")
        elif now - self._first_at > REPEAT_WINDOW_S:
            announce(f"second {signal_name(signum)}: stopping at once, without saving")
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def requested(self, accelerator=None) -> bool:
        """Whether a signal asked to stop, on any process of ``accelerator``'s launch (every process
        must call this at the same points: they agree on the answer; one collective call)."""
        if accelerator is not None and accelerator.num_processes > 1:
            import torch

            mine = torch.tensor([self.signum or 0], device=accelerator.device)
            agreed = int(accelerator.gather(mine).max())  # on every process, whatever its own flag
            self.signum = self.signum or agreed or None
        return self.signum is not None


def announce(line: str) -> None:
    """Write ``line`` to stderr from the main process of a launch (signal-handler safe)."""
    if int(os.environ.get("RANK", "0")) == 0:
        os.write(2, (line + "\n").encode())
