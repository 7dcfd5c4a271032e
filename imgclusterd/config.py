"""Configuration: one pydantic model, loaded from TOML, with every default in one place.

Discovery order (first found wins): ``--config FILE``, ``$IMGCLUSTERD_CONFIG``, the user config
file (``<platformdirs user config dir>/imgclusterd/config.toml``), then built-in defaults. The
defaults reproduce the one-shot script: images from ``data/images``, output to ``data/output``,
relative to the working directory. Relative paths inside a config file are relative to that
file's folder, so a config keeps meaning the same thing wherever the daemon is started from.

Command-line flags override the file. :func:`load_config` also records where each value came
from, for ``imgclusterd config``.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .algorithms import DEFAULT_ALGORITHMS, Algorithm
from .errors import ConfigError

__all__ = [
    "DEFAULT_EXTENSIONS",
    "AlgorithmConfig",
    "Config",
    "LoadedConfig",
    "load_config",
    "user_config_path",
]

APP = "imgclusterd"
DEFAULT_EXTENSIONS = (
    ".jpg", ".jpeg", ".jpe", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp",
    ".heic", ".heif", ".avif",
)  # fmt: skip


class AlgorithmConfig(BaseModel):
    """One ``[[algorithms]]`` table: ``name = "phash_8"``, ``max_threshold``, ``step``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    max_threshold: int = Field(gt=0, le=10_000)
    step: int = Field(default=1, gt=0)

    @field_validator("name")
    @classmethod
    def _known_name(cls, value: str) -> str:
        algorithm = Algorithm.from_name(value, 1, 1)  # ValueError names the accepted kinds
        if algorithm.hash_size < 2:
            raise ValueError("hash size must be at least 2")
        if algorithm.kind == "whash" and algorithm.hash_size & (algorithm.hash_size - 1):
            raise ValueError("whash needs a power-of-two hash size (ImageHash's rule)")
        return value

    def to_algorithm(self) -> Algorithm:
        return Algorithm.from_name(self.name, self.max_threshold, self.step)


def _default_algorithms() -> list[AlgorithmConfig]:
    return [
        AlgorithmConfig(name=a.name, max_threshold=a.max_threshold, step=a.step)
        for a in DEFAULT_ALGORITHMS
    ]


class Config(BaseModel):
    """Everything imgclusterd can be told. See config.example.toml for each key's meaning."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # what and where
    images: Path = Path("data/images")
    output: Path = Path("data/output")
    state_dir: Path | None = None
    extensions: list[str] = Field(default_factory=lambda: list(DEFAULT_EXTENSIONS))
    follow_symlinks: bool = False
    # hashing
    algorithms: list[AlgorithmConfig] = Field(default_factory=_default_algorithms, min_length=1)
    workers: int = Field(default=0, ge=0, le=256)  # 0 = one per core
    decode: Literal["exact", "fast"] = "exact"
    exif_transpose: bool = True
    max_image_pixels: int = Field(default=89_478_485, ge=0)  # Pillow's default; 0 = no limit
    max_file_mb: int = Field(default=1024, ge=0)  # a worker reads the whole file; 0 = no limit
    # thumbnails (state_dir/thumbnails, made by the hashing workers, for the explorer page)
    thumbnails: bool = True
    thumbnail_size: int = Field(default=256, ge=16, le=2048)  # longest side, pixels
    # output
    output_mode: Literal["tree", "mount"] = "tree"
    keep_generations: int = Field(default=2, ge=2, le=100)
    generation_grace: float = Field(default=60.0, ge=0)
    explorer: bool = True  # index.html explorer page at each generation's root
    # daemon
    debounce: float = Field(default=2.0, gt=0, le=3600)
    max_delay: float = Field(default=30.0, gt=0, le=86_400)
    rescan_interval: float = Field(default=3600.0, ge=10)
    watcher: Literal["auto", "inotify", "polling"] = "auto"
    poll_interval: float = Field(default=5.0, gt=0)
    # photos that vanish
    vanished_retention: float = Field(default=30 * 86_400.0, ge=0)
    mass_removal_fraction: float = Field(default=0.5, gt=0, le=1)
    mass_removal_grace: float = Field(default=600.0, ge=0)

    @field_validator("extensions")
    @classmethod
    def _normalise_extensions(cls, value: list[str]) -> list[str]:
        out = []
        for ext in value:
            if not ext.strip("."):
                raise ValueError("an extension must not be empty")
            out.append(("." + ext.lstrip(".")).lower())
        return out

    @field_validator("algorithms")
    @classmethod
    def _unique_algorithms(cls, value: list[AlgorithmConfig]) -> list[AlgorithmConfig]:
        names = [a.to_algorithm().name for a in value]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"listed more than once: {', '.join(duplicates)}")
        return value

    @property
    def algorithm_set(self) -> tuple[Algorithm, ...]:
        return tuple(a.to_algorithm() for a in self.algorithms)

    @property
    def worker_count(self) -> int:
        return self.workers or os.cpu_count() or 1

    @property
    def store_dir(self) -> Path:
        """Where the store, lock and status live: one folder per images folder."""
        if self.state_dir is not None:
            return self.state_dir
        images = self.images.resolve()
        key = hashlib.sha256(os.fsencode(images)).hexdigest()[:12]
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in images.name)[:40]
        return Path(platformdirs.user_state_dir(APP)) / "folders" / f"{name or 'root'}-{key}"


@dataclass
class LoadedConfig:
    """The effective config, the file it came from (if any) and where each key was set."""

    config: Config
    file: Path | None
    sources: dict[str, str] = field(default_factory=dict)


def user_config_path() -> Path:
    """``$XDG_CONFIG_HOME/imgclusterd/config.toml`` (platformdirs' user config dir)."""
    return Path(platformdirs.user_config_dir(APP)) / "config.toml"


_PATH_KEYS = ("images", "output", "state_dir")


def load_config(
    path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> LoadedConfig:
    """Find, read and validate the configuration; raise ConfigError naming the bad key.

    ``overrides`` are command-line values (None means "not given"); their relative paths are
    relative to ``cwd``. Paths are made absolute so a daemon never depends on where it started.
    """
    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else cwd
    file, origin = _discover(path, environ)
    data: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if file is not None:
        data = _read_toml(file)
        for key in data:
            sources[key] = f"{origin} {file}"
        for key in _PATH_KEYS:
            if isinstance(data.get(key), str):
                data[key] = _absolute(Path(data[key]).expanduser(), file.parent)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        data[key] = _absolute(Path(value).expanduser(), cwd) if key in _PATH_KEYS else value
        sources[key] = "command line"
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise _config_error(exc, file) from None
    for key in ("images", "output"):
        if key not in data:
            setattr(config, key, _absolute(getattr(config, key), cwd))
    for key in Config.model_fields:
        sources.setdefault(key, "default")
    return LoadedConfig(config=config, file=file, sources=sources)


def _discover(path: Path | None, environ: Mapping[str, str]) -> tuple[Path | None, str]:
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist", key="--config")
        return path.resolve(), "--config"
    env_path = environ.get("IMGCLUSTERD_CONFIG")
    if env_path:
        if not Path(env_path).is_file():
            raise ConfigError(
                f"IMGCLUSTERD_CONFIG points at {env_path}, which does not exist",
                key="IMGCLUSTERD_CONFIG",
            )
        return Path(env_path).resolve(), "$IMGCLUSTERD_CONFIG"
    user = user_config_path()
    if user.is_file():
        return user, "user config"
    return None, "default"


def _read_toml(file: Path) -> dict[str, Any]:
    try:
        with file.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror}") from None


def _absolute(path: Path, base: Path) -> Path:
    # abspath, not resolve(): OUTPUT is a symlink we own and must stay the path we swap.
    return Path(os.path.abspath(base / path))


def _config_error(exc: ValidationError, file: Path | None) -> ConfigError:
    """Turn pydantic's report into one line that names the key, e.g. ``algorithms[2].step``."""
    first = exc.errors()[0]
    key = ""
    for part in first["loc"]:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown key (see config.example.toml for the keys there are)"
    elif "input" in first and first["type"] != "missing":
        message += f" (got {first['input']!r})"
    where = f"{file}: " if file else ""
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return ConfigError(f"{where}{key or 'config'}: {message}{more}", key=key or None)
