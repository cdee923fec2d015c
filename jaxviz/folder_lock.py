"""One output folder, one job: a lock file that names its holder.

The lock is ``fcntl.flock`` on ``FOLDER/.jaxviz.lock``, which holds the holder's PID,
host and start time for the message a second job prints. The kernel drops a flock
when its process ends in any way (even SIGKILL), so a lock file left by a dead
process is stale and simply taken over; ``release`` removes the file on a clean exit.
Where the file system has no flock (some network file systems), the PID in the file
decides: a live process on this host keeps the lock, anything else is taken over.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import stat
import time

from jaxviz.errors import JaxvizError
from jaxviz.image import FULL

LOCK_NAME = ".jaxviz.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe(holder: dict) -> str:
    """``PID 1234 on host h, since 2026-01-01T10:00:00`` from the lock file's contents."""
    pid = holder.get("pid", "?")
    text = f"PID {pid}"
    if holder.get("host"):
        text += f" on host {holder['host']}"
    if holder.get("since"):
        text += f", since {holder['since']}"
    return text


class FolderLock:
    """``FolderLock(folder, job).acquire()`` ... ``release()``; ``job`` names the command in messages."""

    def __init__(self, folder: str, job: str = "jaxviz"):
        self.folder = folder
        self.job = job
        self.path = os.path.join(folder, LOCK_NAME)
        self.fd: int | None = None

    def _read(self, fd: int) -> dict:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            data = json.loads(os.read(fd, 4096).decode() or "{}")
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError, UnicodeDecodeError):
            return {}

    def _refuse(self, holder: dict):
        raise JaxvizError(
            f"{self.folder} is in use by another {self.job} job ({describe(holder)}); wait for it to finish or "
            f"stop it, or use another --out (its lock file is {self.path})"
        )

    def acquire(self) -> "FolderLock":
        """Take the lock or raise JaxvizError naming the job that holds it."""
        for _ in range(100):
            # not through a link (the lock's JSON replaced the file it named) nor into a pipe or device (a
            # traceback from ftruncate, or a read that waits for good): one line naming the file
            try:
                st = os.lstat(self.path)
            except FileNotFoundError:
                st = None
            except OSError as e:
                raise JaxvizError(f"cannot read the lock file {self.path} ({e.strerror}); "
                                  "choose a writable folder with --out") from None
            if st is not None and not stat.S_ISREG(st.st_mode):
                what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "a folder" if stat.S_ISDIR(st.st_mode) \
                    else "not a regular file (a pipe, device or socket)"
                raise JaxvizError(f"cannot use the lock file {self.path}: it is {what}; move it, or choose another "
                                  "--out")
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
            except OSError as e:
                fix = "free some space, or choose another --out" if e.errno in FULL else \
                    "choose a writable folder with --out"
                raise JaxvizError(f"cannot create the lock file {self.path} ({e.strerror}); {fix}") from None
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # made so since the look above
                os.close(fd)
                raise JaxvizError(f"cannot use the lock file {self.path}: it is not a regular file; move it, or "
                                  "choose another --out")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._read(fd)
                os.close(fd)
                self._refuse(holder)
            except OSError as e:
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                    os.close(fd)
                    raise
                holder = self._read(fd)  # no flock here: the PID decides
                pid = holder.get("pid")
                if (isinstance(pid, int) and pid != os.getpid() and holder.get("host") == socket.gethostname()
                        and _alive(pid)):
                    os.close(fd)
                    self._refuse(holder)
            try:  # the holder may have removed the file between our open and our flock
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
            try:
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                os.write(fd, json.dumps(info).encode())
            except OSError:  # a full disk or quota: the flock holds all the same; the job's own writes say it
                pass
            self.fd = fd
            return self
        raise JaxvizError(f"could not take the lock file {self.path}; other jobs keep replacing it")

    def release(self) -> None:
        """Remove the lock file and drop the lock (safe to call twice)."""
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None
