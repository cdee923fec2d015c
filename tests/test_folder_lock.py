import errno
import os

import pytest

from jaxviz import folder_lock
from jaxviz.errors import JaxvizError
from jaxviz.folder_lock import LOCK_NAME, FolderLock


@pytest.mark.parametrize("code", sorted({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}))
def test_no_room_for_the_lock_file_says_to_free_space(tmp_path, monkeypatch, code):
    """A full disk (or quota) where the lock file is created said "choose a writable folder": the
    folder is writable, it has no room."""
    real = os.open

    def full(path, *a, **k):
        if os.path.basename(path) == LOCK_NAME:
            raise OSError(code, os.strerror(code))
        return real(path, *a, **k)

    monkeypatch.setattr(folder_lock.os, "open", full)
    with pytest.raises(JaxvizError, match=r"^cannot create the lock file .*; free some space, or choose another "
                                          r"--out$") as e:
        FolderLock(str(tmp_path)).acquire()
    assert "writable" not in str(e.value) and os.listdir(tmp_path) == []


def test_no_permission_for_the_lock_file_still_says_a_writable_folder(tmp_path, monkeypatch):
    def denied(path, *a, **k):
        raise OSError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(folder_lock.os, "open", denied)
    with pytest.raises(JaxvizError, match=r"\(Permission denied\); choose a writable folder with --out$"):
        FolderLock(str(tmp_path)).acquire()
