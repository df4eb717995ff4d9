"""The model folder's lock: one writer at a time, across processes and within one; a killed holder leaves it free."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from ddpm_studio.core.errors import UserError
from ddpm_studio.core.model.lock import LOCK_FILE, ModelFolderInUse, ModelFolderLock, lock_model_folder

TIMEOUT = 120  # seconds; a guard against a hang, never a timing assertion

HOLD = textwrap.dedent("""
    import sys, threading
    from ddpm_studio.core.model.lock import lock_model_folder
    lock_model_folder(sys.argv[1])
    print("holding", flush=True)
    threading.Event().wait()
""")

TRY = textwrap.dedent("""
    import sys
    from ddpm_studio.core.model.lock import ModelFolderInUse, lock_model_folder
    try:
        lock_model_folder(sys.argv[1]).release()
    except ModelFolderInUse as error:
        print(error)
        sys.exit(2)
    print("taken")
""")


def python(code: str, *args) -> list[str]:
    return [sys.executable, "-c", code, *map(str, args)]


def try_in_another_process(folder) -> subprocess.CompletedProcess:
    return subprocess.run(python(TRY, folder), capture_output=True, text=True, timeout=TIMEOUT)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_second_process_is_refused_until_the_holder_is_killed(tmp_path):
    folder = tmp_path / "models" / "digits"
    holder = subprocess.Popen(python(HOLD, folder), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        refused = try_in_another_process(folder)
        assert refused.returncode == 2, refused.stderr
        assert refused.stdout.strip() == (f"{folder} is in use by another run (process {holder.pid} on "
                                          f"{os.uname().nodename}); wait for it to end, or train into another folder.")
        with pytest.raises(ModelFolderInUse, match="in use by another run"):
            lock_model_folder(folder)  # nor this process
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(TIMEOUT)
    assert (folder / LOCK_FILE).exists()  # a killed holder removes nothing; its lock went with it
    taken = try_in_another_process(folder)
    assert taken.returncode == 0 and taken.stdout.strip() == "taken", taken.stdout + taken.stderr
    with ModelFolderLock(folder) as lock:
        assert lock.held


def test_two_runs_in_one_process_exclude_each_other(tmp_path):
    folder = tmp_path / "run"
    first = lock_model_folder(folder)
    with pytest.raises(ModelFolderInUse) as refused:
        lock_model_folder(folder)
    assert isinstance(refused.value, UserError) and str(folder) in str(refused.value)
    first.release()
    second = lock_model_folder(folder)
    assert second.held
    second.release()


def test_release_leaves_no_lock_file_and_no_empty_folder_it_made(tmp_path):
    made = tmp_path / "new-model"
    lock = lock_model_folder(made)
    assert made.is_dir() and (made / LOCK_FILE).is_file()
    lock.release()
    assert not made.exists()  # the run failed before writing anything: no folder left to take the name

    kept = tmp_path / "trained"
    with ModelFolderLock(kept):
        (kept / "model.json").write_text("{}")
    assert sorted(path.name for path in kept.iterdir()) == ["model.json"]

    existing = tmp_path / "existing"
    existing.mkdir()
    with ModelFolderLock(existing):
        pass
    assert existing.is_dir()  # not the lock's folder to remove
