"""One writer per output folder, and worker processes that die with their parent.

Two runs writing into one folder lose each other's work (an extraction redoing an item deletes the other
run's crops; two trainings interleave their metrics). `OutputLock` is an advisory `flock` on a file in the
folder: the kernel releases it when its holder dies, however it dies, so a lock left by a killed run is simply
taken over; the pid and host written into the file name the holder in the refusal message.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import json
import os
import signal
import socket
from pathlib import Path

LOCK_NAME = ".recce.lock"
_PR_SET_PDEATHSIG = 1


class LockHeld(RuntimeError):
    """The output folder is in use by another run; the message names it and the holder."""


class OutputLock:
    """An advisory lock on `folder/<name>`, held from `acquire()` to `release()` or the holder's exit.

    Exclusive by default; `shared` locks coexist with each other but not with an exclusive one (shards of one
    extraction share the folder, a whole-folder run excludes them). Non-blocking: a conflicting run is refused at
    once. On file systems without flock (some network mounts) locking is an error rather than a silent no-op.
    """

    def __init__(self, folder: str | os.PathLike, purpose: str, name: str = LOCK_NAME, shared: bool = False) -> None:
        self.folder = Path(folder)
        self.path = self.folder / name
        self.purpose = purpose
        self.shared = shared
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise LockHeld(
                f"{self.folder}: in use by another run ({holder}); wait for it to finish, or choose another folder"
            ) from None
        except OSError as error:
            os.close(fd)
            raise LockHeld(f"{self.path}: cannot lock the output folder ({error.strerror})") from None
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "purpose": self.purpose})
        os.ftruncate(fd, 0)  # shared holders overwrite each other's record; any one of them names the use
        os.pwrite(fd, record.encode("utf-8"), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            if not self.shared:
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = None

    __del__ = release  # a run object dropped after a failure must not keep its folder locked

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        return f"{record['purpose']}, pid {record['pid']} on {record['host']}"
    except (ValueError, KeyError, TypeError, OSError):
        return "holder unknown"


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to kill this process when its parent `parent_pid` dies (Linux), so a killed run leaves no
    workers writing. Elsewhere a no-op: there a worker ends when it next finds its task queue gone.
    """
    libc_name = ctypes.util.find_library("c")
    if not libc_name or not hasattr(signal, "SIGKILL"):
        return
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)
