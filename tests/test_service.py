"""The systemd user unit and install-service / uninstall-service, against a real user manager.

These machines have systemd installed but not running as PID 1. The session fixture starts a real
``systemd --user`` (as ../shared/tools/user-systemd does: the /run/systemd/system marker, a private
0700 XDG_RUNTIME_DIR, a new session) with a private HOME and XDG dirs, in a cgroup of its own so
that it cannot collide with another manager running on the same machine. Only where no manager can
be started (not root, no systemd) are those tests skipped, with the reason.

Until ``imgclusterd run`` exists, the unit is exercised with a stand-in daemon (a drop-in replacing
ExecStart with a small Type=notify script that imports the scientific stack under the unit's real
hardening). The end-to-end test with the real daemon skips, saying so, until ``imgclusterd run``
answers ``--help``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from imgclusterd import service
from imgclusterd.config import user_config_path
from imgclusterd.errors import ImagesFolderError
from imgclusterd.service import (
    UNIT_NAME,
    ServiceError,
    install_service,
    render_unit,
    uninstall_service,
    unit_path,
)

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "systemd" / "imgclusterd.service"
PACKAGE_COPY = REPO / "imgclusterd" / "imgclusterd.service"
SYSTEMD = Path("/lib/systemd/systemd")


def wait_for(what: str, check: Callable[[], object], timeout: float = 30.0) -> object:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


# --- the unit file, offline ---------------------------------------------------------------------


def test_package_copy_is_identical_to_the_repo_template() -> None:
    assert PACKAGE_COPY.read_bytes() == TEMPLATE.read_bytes()
    assert service.unit_template() == TEMPLATE.read_text("utf-8")


def test_render_fills_absolute_paths_and_quotes_for_systemd(tmp_path: Path) -> None:
    text = render_unit(Path("/opt/my tools/imgclusterd"), tmp_path / "cfg 100%.toml")
    assert "@IMGCLUSTERD@" not in text and "@CONFIG@" not in text
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    assert exec_start == (
        f'ExecStart="/opt/my tools/imgclusterd" run --config "{tmp_path}/cfg 100%%.toml"'
    )
    module_form = render_unit([sys.executable, "-m", "imgclusterd"], tmp_path / "c.toml")
    expected = f"ExecStart={sys.executable} -m imgclusterd run --config {tmp_path}/c.toml"
    assert expected in module_form
    with pytest.raises(ValueError, match="absolute"):
        render_unit(Path("imgclusterd"), tmp_path / "c.toml")
    with pytest.raises(ValueError, match="absolute"):
        render_unit(Path("/usr/bin/imgclusterd"), Path("c.toml"))


def test_unit_has_the_settings_the_service_relies_on() -> None:
    text = TEMPLATE.read_text("utf-8")
    settings = {
        line.partition("=")[0]: line.partition("=")[2]
        for line in text.splitlines()
        if "=" in line and not line.startswith("#")
    }
    assert settings["Type"] == "notify"
    assert settings["NotifyAccess"] == "main"
    assert settings["Restart"] == "on-failure"
    assert settings["RestartPreventExitStatus"] == "78"
    assert settings["WatchdogSec"] == "30"
    assert settings["TimeoutStopSec"] == "20"
    assert settings["KillMode"] in ("mixed", "control-group")
    assert settings["WantedBy"] == "default.target"
    for option in ("NoNewPrivileges", "MemoryDenyWriteExecute", "RestrictSUIDSGID"):
        assert settings[option] == "yes"
    for namespacing in ("PrivateTmp", "ProtectSystem", "ProtectHome", "PrivateUsers"):
        assert namespacing not in settings  # need unprivileged user namespaces; see the unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize("command", ["script", "module"])
def test_systemd_analyze_verify_is_silent(tmp_path: Path, command: str) -> None:
    """verify exits 0 even on unknown keys, so any stderr at all is a failure."""
    if command == "script":
        executable = tmp_path / "bin dir" / "imgclusterd"  # a space, to check the quoting
        executable.parent.mkdir()
        executable.write_text("#!/bin/sh\n")
        executable.chmod(0o755)
        text = render_unit(executable, tmp_path / "config.toml")
    else:
        text = render_unit([sys.executable, "-m", "imgclusterd"], tmp_path / "config.toml")
    unit = tmp_path / UNIT_NAME
    unit.write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.stderr == ""
    assert result.returncode == 0


# --- errors that need no manager ----------------------------------------------------------------


def private_environ(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(tmp_path / "home"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }
    env.update(extra)
    return env


def test_no_runtime_dir_is_a_clear_error_and_writes_nothing(tmp_path: Path) -> None:
    env = private_environ(tmp_path)
    with pytest.raises(ServiceError, match="XDG_RUNTIME_DIR is not set") as info:
        install_service({"images": tmp_path / "in"}, now=True, environ=env)
    assert "/run/user/$(id -u)" in str(info.value)
    assert "enable-linger" in str(info.value)
    with pytest.raises(ServiceError, match="XDG_RUNTIME_DIR is not set"):
        uninstall_service(environ=env)
    assert not (tmp_path / "config").exists()
    assert not (tmp_path / "in").exists()


def test_runtime_dir_without_a_manager_is_a_clear_error(tmp_path: Path) -> None:
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    env = private_environ(tmp_path, XDG_RUNTIME_DIR=str(runtime))
    with pytest.raises(ServiceError, match="cannot reach your systemd user manager") as info:
        install_service({"images": tmp_path / "in"}, now=False, environ=env)
    assert "systemctl --user" in str(info.value)
    assert not (tmp_path / "config").exists()
    env["XDG_RUNTIME_DIR"] = str(tmp_path / "gone")
    with pytest.raises(ServiceError, match="does not exist"):
        install_service({"images": tmp_path / "in"}, now=False, environ=env)


def test_no_systemctl_is_a_clear_error(tmp_path: Path) -> None:
    env = private_environ(tmp_path, PATH=str(tmp_path), XDG_RUNTIME_DIR=str(tmp_path))
    with pytest.raises(ServiceError, match="systemctl not found"):
        install_service({}, now=False, environ=env)


def test_service_error_is_an_imgclusterd_error() -> None:
    from imgclusterd.errors import ImgclusterdError

    assert issubclass(ServiceError, ImgclusterdError)
    assert ServiceError("x").exit_code not in (0, 3, 78)


# --- a real systemd --user manager --------------------------------------------------------------


class UserManager:
    """A running ``systemd --user`` with a private HOME, XDG dirs and runtime dir."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.runtime = root / "runtime"
        self.home = root / "home"
        self.config_home = root / "config home"  # a space: ExecStart quoting is checked for real
        self.env = {
            "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "HOME": str(self.home),
            "USER": "root",
            "LOGNAME": "root",
            "XDG_RUNTIME_DIR": str(self.runtime),
            "XDG_CONFIG_HOME": str(self.config_home),
            "XDG_STATE_HOME": str(root / "state home"),
            "XDG_DATA_HOME": str(root / "data home"),
            "XDG_CACHE_HOME": str(root / "cache home"),
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.cgroups: list[Path] = []

    @property
    def unit_dir(self) -> Path:
        return self.config_home / "systemd" / "user"

    def systemctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["systemctl", "--user", *args],
            env=self.env, capture_output=True, text=True, timeout=timeout,
        )

    def show(self, *props: str) -> dict[str, str]:
        out = self.systemctl("show", UNIT_NAME, "--property=" + ",".join(props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def state(self) -> str:
        return self.systemctl("is-system-running").stdout.strip()

    def start(self) -> None:
        self.runtime.mkdir(mode=0o700)
        for key in ("HOME", "XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_DATA_HOME"):
            Path(self.env[key]).mkdir(parents=True, exist_ok=True)
        Path("/run/systemd/system").mkdir(parents=True, exist_ok=True)  # "booted with systemd"
        self.cgroups = _private_cgroups(f"imgclusterd-test-{os.getpid()}")
        # The shell moves itself into the private cgroups, then becomes the manager: its units
        # live under that cgroup instead of the machine's root, where another manager may be.
        script = 'for f in "$@"; do echo $$ > "$f" 2>/dev/null; done; exec "$0" --user'
        with (self.root / "manager.log").open("wb") as log:  # the child keeps its own copy
            self.process = subprocess.Popen(
                ["sh", "-c", script, str(SYSTEMD),
                 *(str(c / "cgroup.procs") for c in self.cgroups)],
                env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 20
        try:
            while self.state() not in ("running", "degraded"):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    tail = (self.root / "manager.log").read_text(errors="replace")[-600:]
                    pytest.skip(f"could not start a systemd user manager here: {tail.strip()!r}")
                time.sleep(0.05)
        except BaseException:  # the skip, or systemctl timing out: no manager left behind
            self.stop()
            raise

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # the manager stops its units, then exits
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        for cgroup in self.cgroups:
            for directory, _dirs, _files in sorted(os.walk(cgroup), reverse=True):
                with contextlib.suppress(OSError):
                    os.rmdir(directory)


def _private_cgroups(name: str) -> list[Path]:
    """Fresh cgroups in every hierarchy systemd uses here (hybrid: name=systemd + unified)."""
    roots = [Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified")]
    roots = [r for r in roots if (r / "cgroup.procs").exists()] or [Path("/sys/fs/cgroup")]
    made = []
    for root in roots:
        try:
            (root / name).mkdir(exist_ok=True)
        except OSError:
            continue  # not allowed: the manager then shares the machine's cgroup root
        made.append(root / name)
    return made


# Module scope, not session: the manager holds inotify watches, and this machine allows 3 per
# user -- left running, it would leave none for the watcher tests that come after this module.
@pytest.fixture(scope="module")
def user_manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UserManager]:
    if not sys.platform.startswith("linux"):
        pytest.skip("systemd user services exist only on Linux")
    if os.geteuid() != 0:
        pytest.skip("starting a private systemd user manager needs root here (to create the "
                    "/run/systemd/system marker and a cgroup); run the tests as root or in CI")
    if not SYSTEMD.exists() or shutil.which("systemctl") is None:
        pytest.skip(f"systemd is not installed ({SYSTEMD} or systemctl missing)")
    manager = UserManager(tmp_path_factory.mktemp("user-manager"))
    manager.start()
    try:
        yield manager
    finally:
        manager.stop()


@pytest.fixture
def manager(user_manager: UserManager, monkeypatch: pytest.MonkeyPatch) -> Iterator[UserManager]:
    """The session's manager, with this process's environment pointing at its private dirs (so
    that user_config_path() agrees), and no imgclusterd unit, drop-in or config left behind."""
    for key, value in user_manager.env.items():
        if key != "PATH":
            monkeypatch.setenv(key, value)
    monkeypatch.delenv("IMGCLUSTERD_CONFIG", raising=False)
    yield user_manager
    user_manager.systemctl("stop", UNIT_NAME)
    shutil.rmtree(user_manager.unit_dir / f"{UNIT_NAME}.d", ignore_errors=True)
    with contextlib.suppress(ServiceError):
        uninstall_service(environ=user_manager.env)
    shutil.rmtree(user_manager.config_home / "imgclusterd", ignore_errors=True)


def write_drop_in(manager: UserManager, name: str, body: str) -> None:
    drop_in = manager.unit_dir / f"{UNIT_NAME}.d" / name
    drop_in.parent.mkdir(parents=True, exist_ok=True)
    drop_in.write_text(textwrap.dedent(body))


STAND_IN_DAEMON = """\
    # A stand-in for `imgclusterd run` until it exists: the same sd_notify protocol, and the
    # imports the real daemon makes, under the unit's real hardening (MemoryDenyWriteExecute...).
    import os, socket, sys, time
    def notify(message):
        address = os.environ["NOTIFY_SOCKET"]
        address = "\\0" + address[1:] if address.startswith("@") else address
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode(), address)
    if sys.argv[1:2] == ["bad-config"]:
        notify("STATUS=config error: images: not a folder")
        sys.exit(78)
    import imagehash, numpy, PIL.Image, pywt, scipy.sparse.csgraph, watchdog.observers
    image = PIL.Image.fromarray((numpy.random.rand(64, 64, 3) * 255).astype("uint8"))
    print("stand-in hashed", imagehash.phash(image), imagehash.whash(image), flush=True)
    time.sleep(float(os.environ.get("STAND_IN_DELAY", "0")))
    notify("READY=1\\nSTATUS=stand-in ready")
    while True:
        notify("WATCHDOG=1")
        time.sleep(0.5)
"""


def use_stand_in(manager: UserManager, tmp_path: Path, *args: str) -> Path:
    script = tmp_path / "stand_in.py"
    script.write_text(textwrap.dedent(STAND_IN_DAEMON))
    command = " ".join([sys.executable, str(script), *args])
    write_drop_in(manager, "stand-in.conf", f"""\
        [Service]
        ExecStart=
        ExecStart={command}
        Environment=STAND_IN_DELAY=1
        RestartSec=1
        """)
    return script


def test_install_writes_config_and_unit_enables_and_is_idempotent(
    manager: UserManager, tmp_path: Path
) -> None:
    images, output = tmp_path / "Pictures inbox", tmp_path / "clusters"
    report = install_service({"images": images, "output": output}, now=False,
                             environ=manager.env)

    assert report.config_file == user_config_path()
    assert report.unit_file == unit_path(manager.env) == manager.unit_dir / UNIT_NAME
    assert images.is_dir()  # given explicitly, so created (and said so)
    assert any("created the images folder" in a for a in report.actions)
    assert not output.exists()  # the daemon owns the output
    config = report.config_file.read_text()
    assert f'images = "{images}"' in config and f'output = "{output}"' in config
    assert report.config_file.stat().st_mode & 0o777 == 0o600

    shown = manager.show("LoadState", "UnitFileState", "ActiveState", "FragmentPath", "ExecStart")
    assert shown["LoadState"] == "loaded"
    assert shown["UnitFileState"] == "enabled"
    assert shown["ActiveState"] == "inactive"  # no --now
    assert shown["FragmentPath"] == str(report.unit_file)
    # systemd parsed the quoted config path (it has a space) back into one argument
    assert f"--config {report.config_file} ;" in shown["ExecStart"]
    assert f"path={report.command[0]} ;" in shown["ExecStart"]
    assert Path(report.command[0]).is_absolute()

    text = str(report)
    for hint in ("imgclusterd status", "systemctl --user status imgclusterd",
                 "journalctl --user -u imgclusterd -f", "loginctl enable-linger"):
        assert hint in text

    unit_before = report.unit_file.read_text()
    again = install_service({}, now=False, environ=manager.env)
    assert any("up to date" in a for a in again.actions)
    assert any("already has these paths" in a for a in again.actions)
    assert again.images == images and again.output == output  # kept from the config file
    assert report.unit_file.read_text() == unit_before
    assert manager.show("UnitFileState")["UnitFileState"] == "enabled"


def test_install_keeps_other_config_keys_and_comments(manager: UserManager,
                                                      tmp_path: Path) -> None:
    config_file = user_config_path()
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(textwrap.dedent("""\
        # my settings
        images = "old/images"   # relative to this file
        workers = 3

        [[algorithms]]
        name = "phash_8"
        max_threshold = 20
        """))
    (config_file.parent / "old" / "images").mkdir(parents=True)
    images = tmp_path / "new images"
    images.mkdir()
    install_service({"images": str(images), "state_dir": tmp_path / "st"}, now=False,
                    environ=manager.env)
    text = config_file.read_text()
    assert text.startswith("# my settings\n")
    assert f'images = "{images}"' in text and "old/images" not in text
    assert "workers = 3" in text and 'name = "phash_8"' in text
    # a path that was only a default is pinned, absolute, before the first table
    header = text.split("[[algorithms]]")[0]
    assert f'state_dir = "{tmp_path / "st"}"' in header
    assert f'output = "{Path.cwd() / "data" / "output"}"' in header


def test_missing_images_folder_not_given_is_refused(manager: UserManager, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the default data/images does not exist here
    with pytest.raises(ImagesFolderError, match="pass --images"):
        install_service({}, now=False, environ=manager.env)
    assert not user_config_path().exists()
    assert not (manager.unit_dir / UNIT_NAME).exists()
    assert not (tmp_path / "data").exists()


def test_install_now_waits_for_ready_and_uninstall_leaves_data(manager: UserManager,
                                                              tmp_path: Path) -> None:
    use_stand_in(manager, tmp_path)
    images, output = tmp_path / "images", tmp_path / "output"
    images.mkdir()
    (images / "keep.jpg").write_bytes(b"not really a jpeg")

    started = time.monotonic()
    report = install_service({"images": images, "output": output}, now=True,
                             environ=manager.env)
    assert report.started
    assert time.monotonic() - started >= 1.0  # systemctl start waited for READY=1 (after 1 s)
    shown = manager.show("ActiveState", "SubState", "StatusText", "MainPID", "Type",
                         "NoNewPrivileges", "MemoryDenyWriteExecute", "UMask", "WatchdogUSec")
    assert shown["ActiveState"] == "active" and shown["SubState"] == "running"
    assert shown["StatusText"] == "stand-in ready"
    assert shown["Type"] == "notify"
    assert shown["NoNewPrivileges"] == "yes" and shown["MemoryDenyWriteExecute"] == "yes"
    assert shown["UMask"] == "0077" and shown["WatchdogUSec"] == "30s"
    pid = int(shown["MainPID"])
    status = Path(f"/proc/{pid}/status").read_text()
    assert "NoNewPrivs:\t1" in status and "Seccomp:\t2" in status
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert f"HOME={manager.home}".encode() in environ  # the private HOME reached the unit

    again = install_service({}, now=True, environ=manager.env)
    assert any("already running" in a for a in again.actions)
    assert int(manager.show("MainPID")["MainPID"]) == pid  # unchanged: not restarted

    other = tmp_path / "other"
    install_service({"output": other}, now=True, environ=manager.env)
    assert int(manager.show("MainPID")["MainPID"]) not in (0, pid)  # config changed: restarted

    removed = uninstall_service(environ=manager.env)
    assert any("stopped" in a for a in removed.actions)
    assert any("disabled" in a for a in removed.actions)
    assert not report.unit_file.exists()
    assert manager.show("LoadState")["LoadState"] == "not-found"
    assert (images / "keep.jpg").read_bytes() == b"not really a jpeg"
    assert report.config_file.is_file()  # the config stays for a later reinstall
    assert "nothing to do" in str(uninstall_service(environ=manager.env))


def test_config_error_exit_78_is_not_restarted_and_is_reported(manager: UserManager,
                                                               tmp_path: Path) -> None:
    use_stand_in(manager, tmp_path, "bad-config")
    images = tmp_path / "images"
    with pytest.raises(ServiceError, match="configuration error: config error: images"):
        install_service({"images": images}, now=True, environ=manager.env)
    time.sleep(2)  # longer than the stand-in's RestartSec=1: a restart would have happened
    shown = manager.show("ActiveState", "NRestarts", "ExecMainStatus", "UnitFileState")
    assert shown["ActiveState"] == "failed"
    assert shown["NRestarts"] == "0"  # RestartPreventExitStatus=78
    assert shown["ExecMainStatus"] == "78"
    assert shown["UnitFileState"] == "enabled"  # installed; fixing the config is what is left


# --- end to end, with the real daemon -----------------------------------------------------------


def _cli(*args: str, env: dict[str, str], timeout: float = 300
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "imgclusterd", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def _missing_command(*commands: str) -> str | None:
    for command in commands:
        result = _cli(command, "--help", env=dict(os.environ), timeout=60)
        if result.returncode != 0:
            return (f"`imgclusterd {command} --help` fails "
                    f"({(result.stderr.strip().splitlines() or ['?'])[-1]})")
    return None


def _install(env: dict[str, str], *args: str) -> str:
    """install-service through the CLI once it has the command, else the function it calls."""
    if _missing_command("install-service", "uninstall-service") is None:
        result = _cli(*args, env=env)
        assert result.returncode == 0, result.stderr
        return result.stdout
    if args[0] == "uninstall-service":
        return str(uninstall_service(environ=env))
    options = dict(zip(args[1::2], args[2::2], strict=False))
    return str(install_service({"images": options.get("--images"),
                                "output": options.get("--output")},
                               now="--now" in args, environ=env))


def _make_photos(folder: Path) -> list[Path]:
    from PIL import Image, ImageDraw

    photos = []
    for index in range(4):
        image = Image.new("RGB", (160, 120), (30 * index, 90, 200 - 40 * index))
        draw = ImageDraw.Draw(image)
        draw.ellipse((20 + 15 * index, 20, 90 + 15 * index, 100), fill=(250, 250, 40 * index))
        for quality, suffix in ((90, ""), (40, "_copy")):  # near-duplicate pairs
            path = folder / f"photo{index}{suffix}.jpg"
            image.save(path, "JPEG", quality=quality)
            photos.append(path)
    return photos


def _linked_images(output: Path) -> set[Path]:
    if not output.exists():
        return set()
    targets = set()
    for directory, _dirs, files in os.walk(output, followlinks=True):
        for name in files:
            path = Path(directory, name)
            if path.is_symlink():
                targets.add(Path(os.readlink(path)))
    return targets


@pytest.mark.slow
def test_real_daemon_under_systemd(manager: UserManager, tmp_path: Path) -> None:
    reason = _missing_command("run", "status")
    if reason:
        pytest.skip(f"the daemon is not there yet: {reason}; this test runs once it is")
    images, output = tmp_path / "images", tmp_path / "output"
    images.mkdir()
    env = {**os.environ, **manager.env}
    # A shorter watchdog so that the hang test takes seconds (5 s proved too tight for a loaded
    # CI machine: a refresh went over it), a faster restart, and the daemon's
    # output in a file: there is no journald on these machines.
    daemon_log = tmp_path / "daemon.log"
    write_drop_in(manager, "test.conf", f"""\
        [Service]
        WatchdogSec=10
        RestartSec=1
        StandardOutput=append:{daemon_log}
        StandardError=append:{daemon_log}
        """)

    def log_tail() -> str:
        text = daemon_log.read_text(errors="replace") if daemon_log.exists() else ""
        return "daemon log:\n" + text[-3000:]

    printed = _install(env, "install-service", "--images", str(images), "--output", str(output),
                       "--now")
    assert "journalctl --user -u imgclusterd" in printed
    shown = manager.show("ActiveState", "SubState", "StatusText", "MainPID", "Type",
                         "ExecMainStartTimestampMonotonic", "ActiveEnterTimestampMonotonic")
    # install-service --now returned only once the unit was active, i.e. after READY=1
    assert (shown["Type"], shown["ActiveState"], shown["SubState"]) == ("notify", "active",
                                                                        "running")
    assert int(shown["ActiveEnterTimestampMonotonic"]) > int(
        shown["ExecMainStartTimestampMonotonic"])
    first_pid = int(shown["MainPID"])
    assert first_pid > 0

    photos = _make_photos(images)
    wait_for("the dropped photos to appear in the output",
             lambda: set(photos) <= _linked_images(output), timeout=180)
    assert manager.show("StatusText")["StatusText"]
    shown = manager.show("MainPID", "NRestarts", "Result")
    assert shown == {"MainPID": str(first_pid), "NRestarts": "0", "Result": "success"}, log_tail()

    os.kill(first_pid, signal.SIGKILL)
    second_pid = wait_for(
        "systemd to restart the killed daemon",
        lambda: (lambda s: s["ActiveState"] == "active" and int(s["MainPID"]) not in (0, first_pid)
                 and int(s["MainPID"]))(manager.show("ActiveState", "MainPID")),
        timeout=120,
    )
    assert int(manager.show("NRestarts")["NRestarts"]) >= 1

    os.kill(int(str(second_pid)), signal.SIGSTOP)  # hung: no more WATCHDOG=1
    wait_for(
        "the watchdog to restart the stopped daemon",
        lambda: (lambda s: s["ActiveState"] == "active"
                 and int(s["MainPID"]) not in (0, int(str(second_pid))))(
            manager.show("ActiveState", "MainPID")),
        timeout=120,
    )
    assert manager.show("Result")["Result"] in ("success", "watchdog")

    assert manager.systemctl("stop", UNIT_NAME).returncode == 0
    assert manager.show("ActiveState")["ActiveState"] == "inactive"
    status = _cli("status", env=env)
    assert status.returncode == 3, status.stdout + status.stderr

    before = {p: p.read_bytes() for p in photos}
    links = _linked_images(output)
    _install(env, "uninstall-service")
    assert not (manager.unit_dir / UNIT_NAME).exists()
    assert {p: p.read_bytes() for p in photos} == before
    assert _linked_images(output) == links


@pytest.mark.slow
def test_real_daemon_under_systemd_in_mount_mode(manager: UserManager, tmp_path: Path) -> None:
    """output_mode = "mount" as a service: install-service adds the drop-in that lets the unit
    mount, the view lists the photos, a kill -9 leaves a stale mount that the restarted daemon
    cleans, and `systemctl --user stop` unmounts."""
    from imgclusterd.mount import mount_state
    from imgclusterd.service import mount_drop_in_path

    from .test_mount import FUSE_UNUSABLE

    if FUSE_UNUSABLE:
        pytest.skip(FUSE_UNUSABLE)
    images, output = tmp_path / "images", tmp_path / "view"
    images.mkdir()
    env = {**os.environ, **manager.env}
    daemon_log = tmp_path / "daemon.log"
    write_drop_in(manager, "test.conf", f"""\
        [Service]
        RestartSec=1
        StandardOutput=append:{daemon_log}
        StandardError=append:{daemon_log}
        """)
    config_file = user_config_path()
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text('output_mode = "mount"\n')

    def log_tail() -> str:
        text = daemon_log.read_text(errors="replace") if daemon_log.exists() else ""
        return "daemon log:\n" + text[-3000:]

    try:
        printed = _install(env, "install-service", "--images", str(images), "--output",
                           str(output), "--now")
        drop_in = mount_drop_in_path(manager.unit_dir / UNIT_NAME)
        assert drop_in.is_file(), printed
        assert manager.show("ActiveState")["ActiveState"] == "active", log_tail()
        wait_for("the view to be mounted", lambda: mount_state(output) == "mounted")
        photos = _make_photos(images)
        wait_for("the dropped photos to appear in the mounted view",
                 lambda: set(photos) <= _linked_images(output), timeout=180)

        first_pid = int(manager.show("MainPID")["MainPID"])
        os.kill(first_pid, signal.SIGKILL)
        wait_for("systemd to restart the killed daemon",
                 lambda: (lambda s: s["ActiveState"] == "active"
                          and int(s["MainPID"]) not in (0, first_pid))(
                     manager.show("ActiveState", "MainPID")), timeout=120)
        wait_for("the restarted daemon to serve the view again",
                 lambda: mount_state(output) == "mounted" and set(photos)
                 <= _linked_images(output), timeout=180)
        assert "stale imgclusterd mount" in daemon_log.read_text(errors="replace"), log_tail()

        assert manager.systemctl("stop", UNIT_NAME).returncode == 0
        assert mount_state(output) == "not mounted", log_tail()
        assert not output.exists()  # the mount point folder it made is removed again
    finally:
        if mount_state(output) != "not mounted":
            subprocess.run(["fusermount3", "-uz", str(output)], check=False)
    _install(env, "uninstall-service")
    assert not drop_in.exists()
    assert [p.read_bytes()[:2] for p in photos] == [b"\xff\xd8"] * len(photos)
