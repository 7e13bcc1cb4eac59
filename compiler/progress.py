"""One line of feedback on a terminal while a long compile runs.

A compile that takes more than ``SYMGRAD_PROGRESS_AFTER`` seconds (default 2) shows its
stage, the graph's size and the time so far on standard error, rewritten in place, and
clears it when done.  Only on a terminal: ``SYMGRAD_PROGRESS=0`` silences it there,
``SYMGRAD_PROGRESS=1`` writes it to a file or pipe too (a log of the stages)."""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time

_active = threading.local()          # the compile this thread is inside, if any


class Progress:
    def __init__(self, nodes: int, stream, after: float, tty: bool):
        self.nodes, self.stream, self.after, self.tty = nodes, stream, after, tty
        self.stage_name = "building"
        self.start = time.perf_counter()
        self.shown = False
        self._logged = None              # the stage a log's last line named
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="symgrad-progress", daemon=True)
        self._thread.start()

    def line(self) -> str:
        return (f"symgrad: compiling {self.nodes:,} nodes — {self.stage_name} — "
                f"{time.perf_counter() - self.start:.1f} s")

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):      # a closed or broken stream: stop, never fail
            self._done.set()

    def _run(self) -> None:
        if self._done.wait(self.after):
            return
        while True:
            with self._lock:    # (shown and the line together: stage() sees both or none)
                self.shown = True
                if self.tty:
                    self._write("\r" + self.line().ljust(78))
                else:
                    self._log()
            if self._done.wait(0.25):
                return

    def _log(self) -> None:
        """A log's line for the current stage, once (stages shorter than a tick too);
        called with the lock held."""
        if self.stage_name != self._logged:
            self._logged = self.stage_name
            self._write(self.line() + "\n")

    def stage(self, name: str) -> None:
        with self._lock:
            self.stage_name = name
            if self.shown and not self.tty:
                self._log()

    def close(self) -> None:
        self._done.set()
        self._thread.join()
        if self.shown:
            took = f"symgrad: compiled {self.nodes:,} nodes in " \
                   f"{time.perf_counter() - self.start:.1f} s"
            self._write(("\r" + took.ljust(78) + "\n") if self.tty else took + "\n")


def _wanted(stream) -> tuple[bool, bool]:
    """(show, on a terminal)."""
    setting = os.environ.get("SYMGRAD_PROGRESS", "")
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return (setting != "0" and tty) or setting == "1", tty


@contextlib.contextmanager
def compiling(nodes: int):
    """Feedback for the compile inside (nested compiles share the outer one's line)."""
    if getattr(_active, "progress", None) is not None:
        yield _active.progress
        return
    stream = sys.stderr
    show, tty = _wanted(stream)
    if not show:
        yield None
        return
    try:
        after = float(os.environ.get("SYMGRAD_PROGRESS_AFTER", "2"))
    except ValueError:
        after = 2.0
    progress = _active.progress = Progress(nodes, stream, after, tty)
    try:
        yield progress
    finally:
        _active.progress = None
        progress.close()


def stage(name: str) -> None:
    """Name the stage the current compile is in (nothing when none is shown)."""
    progress = getattr(_active, "progress", None)
    if progress is not None:
        progress.stage(name)
