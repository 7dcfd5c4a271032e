"""The exceptions imgclusterd raises on purpose. The CLI turns each into one line on stderr.

    ImgclusterdError            root: anything the user can act on
    ├── ConfigError             a bad config value or file (names the key)
    ├── ImagesFolderError       the images folder is missing or not a directory
    ├── OutputError             the output path is not ours, or cannot be written
    ├── StoreError              the hash store is corrupt, foreign or too new
    ├── AlreadyRunning          another daemon holds the lock for this images folder
    ├── UsageError              a command-line value that cannot work (names the valid ones)
    └── PhotoError              a photo named on the command line cannot be read or decoded
"""

from __future__ import annotations

__all__ = [
    "AlreadyRunning",
    "ConfigError",
    "ImagesFolderError",
    "ImgclusterdError",
    "OutputError",
    "PhotoError",
    "StoreError",
    "UsageError",
]


class ImgclusterdError(Exception):
    """Root of imgclusterd's own errors; ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class ConfigError(ImgclusterdError):
    """A configuration problem. ``key`` names the offending setting when there is one."""

    exit_code = 78  # EX_CONFIG: systemd's RestartPreventExitStatus keeps it from looping

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class ImagesFolderError(ImgclusterdError):
    """The images folder does not exist or is not a directory."""

    exit_code = 66  # EX_NOINPUT


class OutputError(ImgclusterdError):
    """The output path belongs to someone else, or a generation could not be written."""

    exit_code = 73  # EX_CANTCREAT


class StoreError(ImgclusterdError):
    """The store cannot be used (corrupt, not ours, newer schema). See ``--reset-store``."""

    exit_code = 74  # EX_IOERR


class AlreadyRunning(ImgclusterdError):
    """Another ``imgclusterd run`` holds the lock for the same images folder."""

    exit_code = 75  # EX_TEMPFAIL

    def __init__(self, pid: int | None, hint: str = "") -> None:
        message = f"already running (pid {pid if pid is not None else 'unknown'})"
        super().__init__(f"{message}{': ' + hint if hint else ''}")
        self.pid = pid


class UsageError(ImgclusterdError):
    """An option value that cannot work, e.g. an algorithm that is not configured."""

    exit_code = 64  # EX_USAGE


class PhotoError(ImgclusterdError):
    """A photo given on the command line is missing, unreadable or not an image."""

    exit_code = 66  # EX_NOINPUT
