"""Settings: defaults that work offline, precedence, and bad values named at load."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhi_local.config import config_path, data_dir, load_config, runtime_dir, socket_path
from rlhi_local.errors import ConfigError


def test_defaults_work_offline_and_paths_follow_rlhi_home(rlhi_home: Path) -> None:
    config = load_config()
    assert config.model.path is None  # the embedded model
    assert config.model.n_ctx >= 4096
    assert config_path() == rlhi_home / "config.toml"
    assert data_dir() == rlhi_home / "data"
    assert socket_path(config) == runtime_dir() / "rlhi.sock"


def test_precedence_flags_over_env_over_file(rlhi_home: Path) -> None:
    config_path().write_text('[model]\nn_ctx = 2048\nn_threads = 1\n[server]\nmax_queue = 3\n')
    env = {"RLHI_MODEL__N_CTX": "1024", "RLHI_SERVER__MAX_QUEUE": "5"}
    config = load_config(environ=env)
    assert (config.model.n_ctx, config.model.n_threads, config.server.max_queue) == (1024, 1, 5)
    config = load_config({"model": {"n_ctx": 512, "path": None}}, environ=env)
    assert config.model.n_ctx == 512 and config.model.path is None


@pytest.mark.parametrize(
    "toml, key",
    [
        ("[model]\nn_ctx = 'big'\n", "model.n_ctx"),
        ("[model]\nn_ctx = 10\n", "model.n_ctx"),
        ("[generation]\ntemperature = 9.0\n", "generation.temperature"),
        ("[server]\nmax_queue = 0\n", "server.max_queue"),
        ("[server]\ntcp_host = '0.0.0.0'\n", "server.tcp_host"),
        ("[server]\nflash = true\n", "server.flash"),
        ("[serverz]\nx = 1\n", "serverz"),
        ("[model]\nflash_attn = 'maybe'\n", "model.flash_attn"),
        ("[training]\nnice = 20\n", "training.nice"),
        ("not toml at all [", "config.toml"),
    ],
)
def test_bad_values_fail_at_load_naming_the_key(toml: str, key: str) -> None:
    config_path().write_text(toml)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config()


def test_env_bool_and_int_parsing() -> None:
    config = load_config(environ={"RLHI_MODEL__FLASH_ATTN": "off", "RLHI_SERVER__TCP_PORT": "8765"})
    assert config.model.flash_attn is False and config.server.tcp_port == 8765
    with pytest.raises(ConfigError, match="RLHI|server.tcp_port"):
        load_config(environ={"RLHI_SERVER__TCP_PORT": "eighty"})
