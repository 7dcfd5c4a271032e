"""Config loading: defaults, discovery order, one clear error naming the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from imgclusterd.algorithms import DEFAULT_ALGORITHMS
from imgclusterd.config import Config, load_config
from imgclusterd.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_reproduce_the_script(tmp_path: Path) -> None:
    loaded = load_config(environ={}, cwd=tmp_path)
    assert loaded.file is None or "IMGCLUSTERD" not in str(loaded.file)
    config = loaded.config
    assert config.images == tmp_path / "data/images"
    assert config.output == tmp_path / "data/output"
    assert config.algorithm_set == DEFAULT_ALGORITHMS
    assert config.decode == "exact" and config.exif_transpose


def test_example_file_documents_every_key_with_its_default() -> None:
    text = (ROOT / "config.example.toml").read_text()
    for key in Config.model_fields:
        assert re.search(rf"^#? ?{key} =", text, re.M) or key == "algorithms", key
    loaded = load_config(ROOT / "config.example.toml", environ={})
    defaults = Config()
    for key in Config.model_fields:
        if key not in ("images", "output"):
            assert getattr(loaded.config, key) == getattr(defaults, key), key


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ("bogus = 1", "bogus"),
        ("workers = -1", "workers"),
        ("workers = 'many'", "workers"),
        ('decode = "slow"', "decode"),
        ("debounce = -2", "debounce"),
        ('[[algorithms]]\nname = "phash_8"\nmax_threshold = 20\nstep = -1', "algorithms[0].step"),
        ('[[algorithms]]\nname = "nohash_8"\nmax_threshold = 20', "algorithms[0].name"),
        ('[[algorithms]]\nname = "whash_12"\nmax_threshold = 20', "algorithms[0].name"),
        (
            '[[algorithms]]\nname = "phash_8"\nmax_threshold = 20\ncolour = 1',
            "algorithms[0].colour",
        ),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, body: str, key: str) -> None:
    file = tmp_path / "c.toml"
    file.write_text(body)
    with pytest.raises(ConfigError) as error:
        load_config(file, environ={})
    assert error.value.key == key
    message = str(error.value)
    assert key in message and "\n" not in message and str(file) in message


def test_syntax_error_is_one_line(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text("images = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(file, environ={})


def test_discovery_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    user = tmp_path / "xdg/imgclusterd/config.toml"
    user.parent.mkdir(parents=True)
    user.write_text('decode = "fast"\n')
    env_file = tmp_path / "env.toml"
    env_file.write_text("workers = 3\n")
    explicit = tmp_path / "explicit.toml"
    explicit.write_text("workers = 1\n")
    assert load_config(environ={}).config.decode == "fast"
    from_env = load_config(environ={"IMGCLUSTERD_CONFIG": str(env_file)})
    assert from_env.config.workers == 3 and from_env.config.decode == "exact"
    assert load_config(explicit, environ={"IMGCLUSTERD_CONFIG": str(env_file)}).config.workers == 1
    with pytest.raises(ConfigError, match="IMGCLUSTERD_CONFIG"):
        load_config(environ={"IMGCLUSTERD_CONFIG": str(tmp_path / "missing.toml")})


def test_relative_paths_follow_the_file_and_flags_override(tmp_path: Path) -> None:
    file = tmp_path / "conf/c.toml"
    file.parent.mkdir()
    file.write_text('images = "photos"\noutput = "../out"\n')
    loaded = load_config(file, {"output": "elsewhere", "images": None}, environ={}, cwd=tmp_path)
    assert loaded.config.images == tmp_path / "conf/photos"
    assert loaded.config.output == tmp_path / "elsewhere"
    assert loaded.sources["output"] == "command line"
    assert loaded.sources["images"].startswith("--config")
    assert loaded.sources["decode"] == "default"


def test_one_store_per_images_folder(tmp_path: Path) -> None:
    a = load_config(None, {"images": "a"}, environ={}, cwd=tmp_path).config
    b = load_config(None, {"images": "b"}, environ={}, cwd=tmp_path).config
    assert a.store_dir != b.store_dir
    assert not a.store_dir.is_relative_to(tmp_path)
