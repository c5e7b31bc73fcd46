"""Settings from nothing, from a TOML file, and from STAGECAST_* variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from stagecast.config import Settings, load_settings
from stagecast.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SEED_ROLES = ["traditional", "traditional_alt", "reasoning", "reasoning_alt", "local_gpu"]


def test_no_configuration_means_one_embedded_local_role() -> None:
    settings = load_settings()
    assert list(settings.models) == ["local"]
    assert settings.models["local"].kind == "embedded"
    assert settings.default_role == "local"


def test_ollama_example_reproduces_the_original_roles() -> None:
    settings = load_settings(ROOT / "examples" / "ollama.toml")
    assert list(settings.models) == [*SEED_ROLES, "remote_openai"]
    assert settings.default_role == "traditional"
    assert settings.models["remote_openai"].api_key_env == "OPENAI_API_KEY"
    assert settings.models["reasoning"].first_token_timeout == 120
    assert settings.models["traditional"].fallbacks == ["traditional_alt"]


def test_config_file_from_env_and_env_overrides_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "stagecast.toml"
    path.write_text(
        'port = 9001\nheartbeat_interval = 3\n[models.a]\nbase_url = "http://h:1/v1"\n'
        "max_concurrency = 2\n"
    )
    monkeypatch.setenv("STAGECAST_CONFIG", str(path))
    monkeypatch.setenv("STAGECAST_PORT", "9002")
    monkeypatch.setenv("STAGECAST_MODELS__A__MAX_CONCURRENCY", "7")
    settings = load_settings()
    assert settings.port == 9002
    assert settings.heartbeat_interval == 3
    assert settings.models["a"].max_concurrency == 7
    assert settings.models["a"].base_url == "http://h:1/v1"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[models.a]\nkind = "openai"\n', "needs base_url"),
        ('default_model = "zzz"\n[models.a]\nbase_url = "http://x/v1"\n', "not a configured role"),
        ('[models.a]\nbase_url = "http://x/v1"\nfallbacks = ["b"]\n', "unknown role 'b'"),
        ('[models.a]\nbase_url = "http://x/v1"\ntimeout = 3\n', "models.a.timeout"),
        ("port = 'eighty'\n", "port"),
    ],
)
def test_invalid_configuration_says_what_to_fix(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert message in info.value.message
    assert str(path) in info.value.message


def test_missing_config_file() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings("/nonexistent/stagecast.toml")


def test_settings_are_not_created_at_import() -> None:
    import stagecast.api.app as app_module

    assert not any(isinstance(v, Settings) for v in vars(app_module).values())
