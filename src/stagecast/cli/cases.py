"""The test-bench file: ``[[cases]]`` in TOML, validated with pydantic.

Each case is one stage (mode ``chat``, ``tools`` or ``tools+synthesis``) plus what it must
show (``expect``). An optional ``[defaults]`` table is merged into every case (its
``expect`` table key by key), so a file can name the role or the limits once::

    [defaults]
    max_tokens = 256

    [[cases]]
    name = "weather"
    mode = "tools"
    role = "traditional"
    user_prompt = "What is the weather at latitude 38.72, longitude -9.14?"
    tool_choice = "get_weather"
    expect.tool_called = "get_weather"
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

CaseMode = Literal["chat", "tools", "tools+synthesis"]
TOOL_MODES = ("tools", "tools+synthesis")

PositiveInt = Annotated[int, Field(ge=1)]
Temperature = Annotated[float, Field(ge=0, le=2)]


class CasesFileError(Exception):
    """The cases file cannot be used; the message names the case and the field."""


def _listed(value: Any) -> Any:
    """One string stands for a list of one."""
    return [value] if isinstance(value, str) else value


def _phases(value: Any) -> Any:
    """One number (or a list of one) stands for both phases: tool call and synthesis."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (value, value)
    return value


class Expectations(BaseModel):
    """What a case must show to pass."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["done", "cancelled", "error"] = "done"
    # Every named tool must have been called at least once.
    tool_called: list[str] = Field(default_factory=list)
    # Every string must occur in the answer text, ignoring case.
    text_contains: list[str] = Field(default_factory=list)
    # The stage must end within this many seconds of the request (it is stopped then).
    within_s: Annotated[float, Field(gt=0)] | None = None
    # No error event, and no tool call that returned an error.
    no_error: bool = False

    @field_validator("tool_called", "text_contains", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return _listed(value)


class Case(BaseModel):
    """One stage of the bench and its expectations."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: Annotated[str, Field(min_length=1)]
    mode: CaseMode = "chat"
    role: str | None = Field(default=None, validation_alias=AliasChoices("role", "model_container"))
    system_prompt: str | None = None
    user_prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    tools: list[str] | None = None
    tool_choice: str | None = None
    max_tool_rounds: Annotated[int, Field(ge=1, le=16)] | None = None
    max_tokens: tuple[PositiveInt, PositiveInt] | None = None
    temperature: tuple[Temperature, Temperature] | None = None
    expect: Expectations = Field(default_factory=Expectations)

    @field_validator("max_tokens", "temperature", mode="before")
    @classmethod
    def _both_phases(cls, value: Any) -> Any:
        return _phases(value)

    @field_validator("tools", mode="before")
    @classmethod
    def _tool_list(cls, value: Any) -> Any:
        return _listed(value)

    @model_validator(mode="after")
    def _consistent(self) -> Case:
        if not self.user_prompt and not self.messages:
            raise ValueError("give user_prompt or messages")
        tool_mode = self.mode in TOOL_MODES
        if not tool_mode:
            used = [
                f
                for f in ("tools", "tool_choice", "max_tool_rounds")
                if getattr(self, f) is not None
            ]
            if self.expect.tool_called:
                used.append("expect.tool_called")
            if used:
                raise ValueError(f"{', '.join(used)} need mode 'tools' or 'tools+synthesis'")
        if self.mode == "tools" and self.expect.text_contains:
            raise ValueError(
                "expect.text_contains needs an answer: use mode 'chat' or 'tools+synthesis'"
            )
        return self

    def body(self, stage_id: str) -> dict[str, Any]:
        """The ``StageRequest`` fields of this case."""
        body: dict[str, Any] = {"stage_id": stage_id}
        fields: dict[str, Any] = {
            "model_container": self.role,
            "system_prompt": self.system_prompt,
            "user_prompt": self.user_prompt,
            "messages": self.messages,
            "max_tokens": list(self.max_tokens) if self.max_tokens else None,
            "temperature": list(self.temperature) if self.temperature else None,
        }
        if self.mode in TOOL_MODES:
            fields.update(
                tools=self.tools,
                tool_choice=self.tool_choice,
                max_tool_rounds=self.max_tool_rounds,
                synthesis=self.mode == "tools+synthesis",
            )
        body.update({k: v for k, v in fields.items() if v is not None})
        return body


def load_cases(path: Path) -> list[Case]:
    """Read and validate a cases file; every problem is reported, each with its case."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CasesFileError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CasesFileError(f"{path} is not valid TOML: {exc}") from exc
    unknown = sorted(set(raw) - {"defaults", "cases"})
    if unknown:
        raise CasesFileError(
            f"{path}: unknown top-level keys {unknown} (use [defaults], [[cases]])"
        )
    defaults = raw.get("defaults", {})
    entries = raw.get("cases")
    if not isinstance(defaults, dict):
        raise CasesFileError(f"{path}: defaults must be a table ([defaults])")
    if not isinstance(entries, list) or not entries:
        raise CasesFileError(f"{path}: no cases (add [[cases]] tables)")
    cases: list[Case] = []
    problems: list[str] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            problems.append(f"cases[{i}]: must be a table ([[cases]])")
            continue
        merged = {**defaults, **entry}
        if isinstance(defaults.get("expect"), dict) and isinstance(entry.get("expect", {}), dict):
            # Expectations merge key by key, so a case can add to the defaults' ones.
            merged["expect"] = {**defaults["expect"], **entry.get("expect", {})}
        where = f"case {entry['name']!r} (cases[{i}])" if entry.get("name") else f"cases[{i}]"
        try:
            cases.append(Case.model_validate(merged))
        except ValidationError as exc:
            problems.extend(f"{where}: {_describe(err)}" for err in exc.errors())
    seen: set[str] = set()
    for case in cases:
        if case.name in seen:
            problems.append(f"case {case.name!r}: name used twice (names must be unique)")
        seen.add(case.name)
    if problems:
        raise CasesFileError(f"{path}: invalid cases:\n  " + "\n  ".join(problems))
    return cases


def _describe(err: Any) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return f"{loc}: unknown field"
    message = str(err["msg"]).removeprefix("Value error, ")
    return f"{loc}: {message}" if loc else message
