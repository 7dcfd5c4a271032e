"""The instance lock against real other processes: python -c holders, SIGKILL, fork."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgclusterd.errors import AlreadyRunning
from imgclusterd.lock import InstanceLock, holder_pid


def _holder(lock_path: Path, *, fork_child: bool = False) -> tuple[subprocess.Popen[str], int]:
    """A process that takes the lock, prints READY (and a forked child's pid), then waits."""
    code = textwrap.dedent(
        f"""
        import os, sys, time
        from pathlib import Path
        from imgclusterd.lock import InstanceLock
        lock = InstanceLock(Path({str(lock_path)!r}))
        lock.acquire()
        child = 0
        if {fork_child!r}:
            child = os.fork()
            if child == 0:
                time.sleep(300)
                os._exit(0)
        print("READY", child, flush=True)
        sys.stdin.read()
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    try:
        line = process.stdout.readline().split()
        assert line and line[0] == "READY", line
    except BaseException:
        process.kill()  # not left running (nor its pipes open) to fail a later test
        process.communicate()
        raise
    return process, int(line[1])


def _try_acquire_elsewhere(lock_path: Path) -> subprocess.CompletedProcess[str]:
    code = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from imgclusterd.errors import AlreadyRunning
        from imgclusterd.lock import InstanceLock
        try:
            InstanceLock(Path({str(lock_path)!r})).acquire()
        except AlreadyRunning as exc:
            print(exc)
            sys.exit(exc.exit_code)
        print("acquired")
        """
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def lock_path(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "state" / "imgclusterd.lock"


def test_second_instance_in_another_process_is_refused(lock_path: Path) -> None:
    with InstanceLock(lock_path) as lock:
        assert lock.held
        assert lock_path.read_text().strip() == str(os.getpid())
        result = _try_acquire_elsewhere(lock_path)
        assert result.returncode == AlreadyRunning.exit_code
        assert result.stdout.strip() == f"already running (pid {os.getpid()})"
        assert holder_pid(lock_path) == os.getpid()
    assert holder_pid(lock_path) is None
    result = _try_acquire_elsewhere(lock_path)
    assert result.stdout.strip() == "acquired" and result.returncode == 0


def test_refused_here_while_another_process_holds_it(lock_path: Path) -> None:
    holder, _ = _holder(lock_path)
    try:
        with pytest.raises(AlreadyRunning) as caught:
            InstanceLock(lock_path).acquire()
        assert caught.value.pid == holder.pid
        assert str(caught.value) == f"already running (pid {holder.pid})"
        assert holder_pid(lock_path) == holder.pid
    finally:
        holder.communicate("")  # EOF on stdin: the holder exits normally
    assert holder_pid(lock_path) is None
    with InstanceLock(lock_path):
        assert holder_pid(lock_path) == os.getpid()


def test_sigkilled_holder_frees_the_lock(lock_path: Path) -> None:
    holder, _ = _holder(lock_path)
    holder.send_signal(signal.SIGKILL)
    holder.communicate()
    assert holder_pid(lock_path) is None  # its pid is still written, but nobody holds the lock
    lock = InstanceLock(lock_path)
    lock.acquire()
    assert lock_path.read_text().strip() == str(os.getpid())
    lock.release()
    lock.release()  # idempotent


def test_forked_child_does_not_keep_the_lock(lock_path: Path) -> None:
    """A worker forked by the daemon outlives a SIGKILLed daemon: the restart must still work."""
    holder, grandchild = _holder(lock_path, fork_child=True)
    try:
        holder.send_signal(signal.SIGKILL)
        holder.wait()  # not communicate(): the grandchild still holds the pipes open
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.close()
        holder.stdout.close()
        os.kill(grandchild, 0)  # still alive
        with InstanceLock(lock_path):
            assert holder_pid(lock_path) == os.getpid()
    finally:
        os.kill(grandchild, signal.SIGKILL)


def test_holder_pid_when_no_file(tmp_path: Path) -> None:
    assert holder_pid(tmp_path / "missing.lock") is None


def test_acquire_twice_in_one_object_is_a_bug(lock_path: Path) -> None:
    with InstanceLock(lock_path) as lock, pytest.raises(RuntimeError, match="already locked"):
        lock.acquire()


def test_lock_fd_is_close_on_exec(lock_path: Path) -> None:
    with InstanceLock(lock_path):
        fds = [int(fd) for fd in os.listdir("/proc/self/fd")]
        ours = [fd for fd in fds if _points_at(fd, lock_path)]
        assert ours and all(not os.get_inheritable(fd) for fd in ours)


def test_release_empties_the_pid(lock_path: Path) -> None:
    lock = InstanceLock(lock_path)
    lock.acquire()
    lock.release()
    assert lock_path.read_text() == ""
    assert holder_pid(lock_path) is None


def _points_at(fd: int, path: Path) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == str(path)
    except OSError:
        return False


def test_unusable_state_folder_is_a_store_error(tmp_path: Path) -> None:
    """A state dir through a regular file: one clear error (exit 74), not a traceback."""
    from imgclusterd.errors import StoreError

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match=r"cannot use the state folder .*a_file/st: Not a dir"):
        InstanceLock(blocker / "st" / "daemon.lock").acquire()
    assert StoreError.exit_code == 74
