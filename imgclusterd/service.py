"""Install imgclusterd as a systemd user service, and remove it again.

``install_service`` writes (or updates) the user config file with absolute paths, renders the unit
template (``systemd/imgclusterd.service``, shipped as package data) with the absolute command of the
imgclusterd being run into ``$XDG_CONFIG_HOME/systemd/user/``, and asks the user manager to reload,
enable and, with ``now``, (re)start it. ``uninstall_service`` stops, disables and removes the unit
and touches nothing else: images, output, store and config stay. Both are idempotent.

Everything goes through ``systemctl --user``. When it cannot reach a user manager (under ``su`` or
``sudo``, in cron, in a container without systemd) :class:`ServiceError` says why and what to do,
and nothing has been written.

Folder policy: an images folder given explicitly (``--images``) is created if missing, since the
user asked for it by name; an images folder that only comes from the existing config or the
defaults must already exist (we never create folders in the user's home on a guess). The output
folder is never created here: the daemon owns it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .config import load_config, user_config_path
from .errors import ConfigError, ImagesFolderError, ImgclusterdError

__all__ = [
    "UNIT_NAME",
    "InstallReport",
    "ServiceError",
    "UninstallReport",
    "install_service",
    "mount_drop_in_path",
    "render_unit",
    "uninstall_service",
    "unit_path",
    "unit_template",
]

log = logging.getLogger(__name__)

UNIT_NAME = "imgclusterd.service"
_PATH_KEYS = ("images", "output", "state_dir")
_SYSTEMCTL_TIMEOUT = 30.0  # seconds, for calls that do not wait for a start job
_START_TIMEOUT = 180.0  # longer than the unit's TimeoutStartSec, so systemd decides first


class ServiceError(ImgclusterdError):
    """The user service could not be installed, started or removed; the message says what to do."""

    exit_code = 69  # EX_UNAVAILABLE


# --- public API ---------------------------------------------------------------------------------


@dataclass
class InstallReport:
    """What ``install_service`` did; ``str(report)`` is what ``install-service`` prints."""

    config_file: Path
    unit_file: Path
    command: list[str]
    images: Path
    output: Path
    actions: list[str] = field(default_factory=list)
    started: bool = False

    def __str__(self) -> str:
        lines = [*(f"- {a}" for a in self.actions), ""]
        lines.append(f"imgclusterd watches {self.images} and writes clusters to {self.output}.")
        if self.started:
            lines.append("The service is running and starts again at every login.")
        else:
            lines.append("The service is enabled and will start at your next login; start it now")
            lines.append("with: systemctl --user start imgclusterd")
        lines += [
            "",
            "Check it:",
            "  imgclusterd status",
            "  systemctl --user status imgclusterd",
            "  journalctl --user -u imgclusterd -f      # its log, live",
            "",
            "To run it from boot even when you are not logged in:",
            f"  loginctl enable-linger {_user_name()}",
        ]
        return "\n".join(lines)


@dataclass
class UninstallReport:
    """What ``uninstall_service`` did. ``str(report)`` is what ``uninstall-service`` prints."""

    unit_file: Path
    actions: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"- {a}" for a in self.actions]
        lines.append("Images, output, the hash store and the config file were left as they are.")
        return "\n".join(lines)


def unit_template() -> str:
    """The unit template shipped as package data (identical to ``systemd/imgclusterd.service``)."""
    return resources.files("imgclusterd").joinpath("imgclusterd.service").read_text("utf-8")


def render_unit(executable: Path | Sequence[str], config_file: Path) -> str:
    """The unit text with absolute paths filled in.

    ``executable`` is the imgclusterd program, or a whole command such as
    ``[sys.executable, "-m", "imgclusterd"]``. Arguments are quoted for systemd's command-line
    syntax, so paths with spaces, ``%`` or ``$`` survive.
    """
    command = [str(executable)] if isinstance(executable, Path) else [str(a) for a in executable]
    if not command or not Path(command[0]).is_absolute():
        raise ValueError(f"the unit needs an absolute executable, got {command!r}")
    if not config_file.is_absolute():
        raise ValueError(f"the unit needs an absolute config path, got {config_file}")
    text = unit_template()
    for placeholder in ("@IMGCLUSTERD@", "@CONFIG@"):
        if placeholder not in text:  # a template edited by hand must not install half-filled
            raise ValueError(f"unit template lacks {placeholder}")
    text = text.replace("@IMGCLUSTERD@", " ".join(_systemd_quote(a) for a in command))
    return text.replace("@CONFIG@", _systemd_quote(str(config_file)))


def unit_path(environ: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_CONFIG_HOME/systemd/user/imgclusterd.service`` (``~/.config`` by default)."""
    return _config_home(environ) / "systemd" / "user" / UNIT_NAME


def install_service(
    config_overrides: Mapping[str, Any] | None = None,
    now: bool = False,
    *,
    environ: Mapping[str, str] = os.environ,
    cwd: Path | None = None,
) -> InstallReport:
    """Write config and unit, reload, enable, and with ``now`` (re)start; see the module doc.

    ``config_overrides`` holds ``images``/``output``/``state_dir`` from the command line (None
    means "not given"); relative paths are relative to ``cwd``. Raises ServiceError when no user
    manager can be reached, ConfigError when the existing config file is invalid,
    ImagesFolderError when the images folder does not exist and was not given explicitly.
    """
    overrides = {k: v for k, v in (config_overrides or {}).items() if v is not None}
    unknown = sorted(set(overrides) - set(_PATH_KEYS))
    if unknown:
        raise ValueError(f"install_service takes only {_PATH_KEYS}, not {unknown}")
    cwd = Path.cwd() if cwd is None else cwd
    systemctl = _Systemctl(environ)
    systemctl.check_reachable()  # before writing anything: fail cleanly, not half-installed

    actions: list[str] = []
    config_file = _config_file(environ)
    values = _config_values(config_file, overrides, cwd)
    images = values["images"]
    if not images.is_dir():
        if "images" not in overrides:
            raise ImagesFolderError(
                f"the images folder {images} does not exist; create it, or pass --images DIR"
            )
        images.mkdir(parents=True, exist_ok=True)
        actions.append(f"created the images folder {images}")
    config_action, config_changed = _write_config(config_file, values)
    actions.append(config_action)

    command = _imgclusterd_command()
    unit_file = unit_path(environ)
    unit_text = render_unit(command, config_file)
    old_unit = unit_file.read_text("utf-8") if unit_file.is_file() else None
    if old_unit != unit_text:
        unit_file.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(unit_file, unit_text, mode=0o644)
        actions.append(f"{'updated' if old_unit else 'wrote'} the unit {unit_file}")
    else:
        actions.append(f"the unit {unit_file} is up to date")
    actions.append(f"  ExecStart={shlex.join(command)} run --config {config_file}")
    mount_changed = _write_mount_drop_in(unit_file, config_file, actions)

    systemctl.run("daemon-reload")
    systemctl.run("enable", UNIT_NAME)
    actions.append("reloaded the user manager and enabled imgclusterd (starts at login)")
    changed = config_changed or old_unit != unit_text or mount_changed
    started = False
    if now:
        active = systemctl.show(UNIT_NAME, "ActiveState") == "active"
        if active and not changed:
            actions.append("imgclusterd was already running with this setup; left it running")
        else:
            # a unit that hit its start limit refuses to start until its failure is reset
            systemctl.run("reset-failed", UNIT_NAME, check=False)
            systemctl.start(UNIT_NAME, restart=active)
            actions.append(f"{'restarted' if active else 'started'} imgclusterd")
        started = True
    log.info("installed the user service: %s", "; ".join(actions))
    return InstallReport(
        config_file=config_file,
        unit_file=unit_file,
        command=command,
        images=images,
        output=values["output"],
        actions=actions,
        started=started,
    )


def uninstall_service(*, environ: Mapping[str, str] = os.environ) -> UninstallReport:
    """Stop, disable and remove the unit file, then reload. Touches no data and no config."""
    systemctl = _Systemctl(environ)
    systemctl.check_reachable()
    unit_file = unit_path(environ)
    actions: list[str] = []
    if systemctl.show(UNIT_NAME, "ActiveState") in ("active", "activating", "reloading"):
        systemctl.run("stop", UNIT_NAME, timeout=_START_TIMEOUT)
        actions.append("stopped imgclusterd")
    if systemctl.show(UNIT_NAME, "UnitFileState") in ("enabled", "enabled-runtime", "linked"):
        systemctl.run("disable", UNIT_NAME)
        actions.append("disabled imgclusterd")
    if unit_file.exists():
        unit_file.unlink()
        actions.append(f"removed the unit {unit_file}")
    drop_in = mount_drop_in_path(unit_file)
    if drop_in.exists():
        drop_in.unlink()
        actions.append(f"removed the mount-mode drop-in {drop_in}")
        with contextlib.suppress(OSError):
            drop_in.parent.rmdir()  # only if nothing else (a user's own drop-in) is there
    systemctl.run("daemon-reload")
    systemctl.run("reset-failed", UNIT_NAME, check=False)  # forget a failed state, if any
    if not actions:
        actions.append("imgclusterd was not installed as a user service; nothing to do")
    log.info("uninstalled the user service: %s", "; ".join(actions))
    return UninstallReport(unit_file=unit_file, actions=actions)


# --- mount mode ---------------------------------------------------------------------------------

MOUNT_DROP_IN = "imgclusterd-mount.conf"
_MOUNT_DROP_IN_TEXT = """\
# Written by `imgclusterd install-service` because the config sets output_mode = "mount";
# removed again by it when the config goes back to "tree", and by uninstall-service.
#
# Mount mode mounts a FUSE filesystem. An unprivileged user mounts through the setuid helper
# fusermount3, and the kernel's no_new_privs flag makes setuid a no-op; in a *user* unit systemd
# sets that flag for every seccomp-based option (SystemCallFilter, SystemCallArchitectures,
# MemoryDenyWriteExecute, RestrictRealtime, LockPersonality, RestrictSUIDSGID,
# RestrictNamespaces, RestrictAddressFamilies), whatever NoNewPrivileges says. So they are
# lifted here, and only in this mode. (As root the daemon mounts with mount(2) itself, which
# @system-service does not allow either.) The rest of the unit's settings stay.
[Service]
NoNewPrivileges=no
SystemCallFilter=
SystemCallArchitectures=
MemoryDenyWriteExecute=no
RestrictRealtime=no
LockPersonality=no
RestrictSUIDSGID=no
RestrictNamespaces=no
RestrictAddressFamilies=
"""


def mount_drop_in_path(unit_file: Path) -> Path:
    """Where the mount-mode drop-in of ``unit_file`` lives."""
    return unit_file.parent / f"{unit_file.name}.d" / MOUNT_DROP_IN


def _write_mount_drop_in(unit_file: Path, config_file: Path, actions: list[str]) -> bool:
    """Write (output_mode = "mount") or remove (tree) the drop-in; True when it changed."""
    mode = load_config(config_file, {}, environ={}).config.output_mode
    drop_in = mount_drop_in_path(unit_file)
    if mode == "mount":
        if drop_in.is_file() and drop_in.read_text("utf-8") == _MOUNT_DROP_IN_TEXT:
            return False
        drop_in.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(drop_in, _MOUNT_DROP_IN_TEXT, mode=0o644)
        actions.append(f"wrote {drop_in} (mount mode: lifts the seccomp hardening that "
                       "keeps fusermount3 from mounting)")
        return True
    if drop_in.exists():
        drop_in.unlink()
        actions.append(f"removed {drop_in} (tree mode needs no mount)")
        return True
    return False


# --- config file --------------------------------------------------------------------------------


def _config_values(config_file: Path, overrides: Mapping[str, Any], cwd: Path) -> dict[str, Path]:
    """The absolute images/output (and state_dir, when set) the service will use.

    Command line first, then the existing user config file, then the defaults resolved against
    ``cwd``: a daemon started by systemd runs in $HOME, so a relative default like
    ``data/images`` must be pinned now to mean what it means to the user typing the command.
    """
    # validates the existing file too: installing a service that will exit 78 helps nobody
    if config_file.is_file():
        config = load_config(config_file, dict(overrides), environ={}, cwd=cwd).config
    else:  # an empty file, so that load_config does not go looking for another one
        with tempfile.TemporaryDirectory() as empty_dir:
            empty = Path(empty_dir) / "config.toml"
            empty.touch()
            config = load_config(empty, dict(overrides), environ={}, cwd=cwd).config
    values = {"images": config.images, "output": config.output}
    if config.state_dir is not None:
        values["state_dir"] = config.state_dir
    return {key: Path(os.path.abspath(value)) for key, value in values.items()}


def _write_config(config_file: Path, values: Mapping[str, Path]) -> tuple[str, bool]:
    """Set the path keys in the user config file, keeping its other keys and comments."""
    old = config_file.read_text("utf-8") if config_file.is_file() else None
    text = old if old is not None else _NEW_CONFIG_HEADER
    for key, value in values.items():
        text = _set_toml_key(text, key, str(value))
    try:
        parsed = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # e.g. a multi-line value we could not replace
        raise ConfigError(
            f"{config_file}: could not update it automatically ({exc}); "
            f"set {', '.join(f'{k} = {str(v)!r}' for k, v in values.items())} by hand"
        ) from None
    for key, value in values.items():
        if parsed.get(key) != str(value):
            raise ConfigError(f"{config_file}: could not set {key}; set it to {value} by hand")
    if text == old:
        return f"the config {config_file} already has these paths", False
    config_file.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(config_file, text, mode=0o600)
    return f"{'updated' if old is not None else 'wrote'} the config {config_file}", True


_NEW_CONFIG_HEADER = (
    "# imgclusterd configuration, written by `imgclusterd install-service`.\n"
    "# Every key is described in config.example.toml. Check a change with\n"
    "# `imgclusterd config --check FILE`, then: systemctl --user restart imgclusterd\n"
)


def _set_toml_key(text: str, key: str, value: str) -> str:
    """Replace the top-level ``key = ...`` line, or add one before the first table."""
    line = f"{key} = {_toml_string(value)}"
    lines = text.splitlines()
    first_table = len(lines)
    for index, raw in enumerate(lines):
        stripped = raw.strip()
        if stripped.startswith("["):
            first_table = index
            break
        name, sep, _ = stripped.partition("=")
        if sep and name.strip().strip("\"'") == key:
            lines[index] = line
            return "\n".join(lines) + "\n"
    # after the top-level keys already there, before any blank lines leading to the first table
    insert_at = first_table
    while insert_at > 0 and not lines[insert_at - 1].strip():
        insert_at -= 1
    lines.insert(insert_at, line)
    return "\n".join(lines) + "\n"


def _toml_string(value: str) -> str:
    """A TOML basic string. Paths that are not valid UTF-8 cannot be written to TOML at all."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{value!r} is not valid UTF-8 and cannot go in a TOML file") from None
    out = []
    for char in value:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


# --- unit file ----------------------------------------------------------------------------------


def _imgclusterd_command() -> list[str]:
    """The absolute command of the imgclusterd being run now.

    Paths are made absolute but symlinks are kept: ``~/.local/bin/imgclusterd`` from pipx is a
    symlink that survives reinstalls, and a venv's ``bin/python`` must stay the venv's (resolving
    it would name the base interpreter, which lacks our packages).
    """
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if argv0 is not None and argv0.name == "imgclusterd" and argv0.is_file():
        if argv0.parent == Path():  # run via $PATH lookup with an empty dirname
            found = shutil.which("imgclusterd")
            if found:
                return [os.path.abspath(found)]
        return [os.path.abspath(argv0)]
    running_as_module = argv0 is not None and argv0.parts[-2:] == ("imgclusterd", "__main__.py")
    if not running_as_module:
        beside = Path(sys.executable).parent / "imgclusterd"  # the same environment's script
        if beside.is_file() and os.access(beside, os.X_OK):
            return [os.path.abspath(beside)]
        found = shutil.which("imgclusterd")
        if found:
            return [os.path.abspath(found)]
    return [os.path.abspath(sys.executable), "-m", "imgclusterd"]


def _systemd_quote(arg: str) -> str:
    """Quote one ExecStart argument: ``%`` is a specifier and ``$`` expands variables in systemd."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    if arg and not any(c in arg for c in " \t\n\"'\\;"):
        return arg
    for char, escape in (("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\t", "\\t")):
        arg = arg.replace(char, escape)
    return f'"{arg}"'


def _write_atomically(path: Path, text: str, *, mode: int) -> None:
    """Write ``text`` to a temporary file beside ``path``, fsync, then rename over it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _config_file(environ: Mapping[str, str]) -> Path:
    """The user config file, as ``imgclusterd status``/``config`` will find it later."""
    if environ is os.environ:
        return user_config_path()
    return _config_home(environ) / "imgclusterd" / "config.toml"


def _config_home(environ: Mapping[str, str]) -> Path:
    """``$XDG_CONFIG_HOME``, else ``~/.config``: the rule platformdirs and systemd both follow."""
    value = environ.get("XDG_CONFIG_HOME", "").strip()
    if value:
        return Path(value)
    home = environ.get("HOME") or os.path.expanduser("~")
    return Path(home) / ".config"


def _user_name() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return os.environ.get("USER", "$USER")


# --- systemctl ----------------------------------------------------------------------------------

_REACH_HINT = (
    "The user manager runs while you are logged in (a graphical, console or ssh login; not `su` "
    "or `sudo`, which keep the other user's session). Log in as this user directly and run the "
    "command again; from a shell that lacks it, try XDG_RUNTIME_DIR=/run/user/$(id -u). To keep "
    "a manager running without any login: sudo loginctl enable-linger $USER. Without systemd, "
    "run `imgclusterd run` in the foreground under your own supervisor instead."
)


class _Systemctl:
    """``systemctl --user`` with the caller's environment; failures become ServiceError."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = dict(environ)

    def check_reachable(self) -> None:
        if shutil.which("systemctl", path=self.environ.get("PATH", os.defpath)) is None:
            raise ServiceError(
                "systemctl not found: installing a service needs systemd. Run `imgclusterd run` "
                "in the foreground instead, or under your own supervisor."
            )
        runtime_dir = self.environ.get("XDG_RUNTIME_DIR", "")
        if not runtime_dir:
            raise ServiceError(
                "cannot reach your systemd user manager: XDG_RUNTIME_DIR is not set, so "
                "`systemctl --user` does not know where it listens. " + _REACH_HINT
            )
        if not os.path.isdir(runtime_dir):
            raise ServiceError(
                f"cannot reach your systemd user manager: XDG_RUNTIME_DIR={runtime_dir} does not "
                "exist (no login session for this user). " + _REACH_HINT
            )
        result = self._call(["show", "--property=Version"], timeout=_SYSTEMCTL_TIMEOUT)
        if result.returncode != 0:
            why = _first_line(result.stderr) or f"systemctl exited with {result.returncode}"
            raise ServiceError(
                f"cannot reach your systemd user manager (systemctl --user: {why}). "
                + _REACH_HINT
            )

    def run(self, *args: str, check: bool = True, timeout: float = _SYSTEMCTL_TIMEOUT) -> None:
        result = self._call(list(args), timeout=timeout)
        if check and result.returncode != 0:
            why = _first_line(result.stderr) or f"exit status {result.returncode}"
            raise ServiceError(f"systemctl --user {shlex.join(args)} failed: {why}")

    def show(self, unit: str, prop: str) -> str:
        result = self._call(["show", f"--property={prop}", "--value", unit], timeout=30)
        return result.stdout.strip() if result.returncode == 0 else ""

    def start(self, unit: str, *, restart: bool) -> None:
        """Start (or restart) and wait for READY=1; on failure say what systemd knows."""
        verb = "restart" if restart else "start"
        result = self._call([verb, unit], timeout=_START_TIMEOUT)
        if result.returncode == 0:
            return
        status = self.show(unit, "StatusText")
        exit_code = self.show(unit, "ExecMainStatus")
        why = f"its status says: {status}" if status else _first_line(result.stderr)
        if exit_code == "78":
            why = f"configuration error: {status or 'see the log'}"
        raise ServiceError(
            f"imgclusterd was installed and enabled but did not start ({why}). Its log: "
            "journalctl --user -u imgclusterd -e; its state: systemctl --user status imgclusterd"
        )

    def _call(self, args: list[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                ["systemctl", "--user", "--no-ask-password", *args],
                env=self.environ,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ServiceError(
                f"systemctl --user {shlex.join(args)} did not answer within {timeout:.0f} s; "
                "see systemctl --user status imgclusterd"
            ) from None
        except OSError as exc:
            raise ServiceError(f"cannot run systemctl: {exc.strerror}") from None


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else ""
