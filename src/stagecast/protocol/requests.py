"""The request body every stage route accepts: the seed's fields plus multi-turn messages."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

StageId = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
]


class ChatMessage(BaseModel):
    """One OpenAI chat message; unknown keys pass through to the model server."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


INT64 = 2**63


def _unportable(value: Any, path: str) -> tuple[str, str] | None:
    """The first value a model server could not be sent as JSON: (where, what is wrong).

    Python's JSON parser accepts lone UTF-16 surrogates and integers of any size; neither
    survives re-encoding for the model server, so they are refused here with a 422.
    """
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path, "contains an unpaired UTF-16 surrogate; send valid Unicode"
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if not -INT64 <= value < INT64:
            return path, "has an integer outside the 64-bit range"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            child = f"{path}.{key}".strip(".")
            found = _unportable(key, path) or _unportable(item, child)
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _unportable(item, f"{path}.{i}".strip("."))
            if found is not None:
                return found
    return None


def _pair(value: Any) -> Any:
    """A single number stands for both phases (tool phase, synthesis phase)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (value, value)
    return value


class StageRequest(BaseModel):
    """Body of ``/completion/v1/*`` and ``/stream/v1/*``.

    ``max_tokens`` and ``temperature`` are pairs, as in the original protocol: index 0 for the
    tool (or chat) phase, index 1 for synthesis. ``prompts`` are extra system instructions for
    the same two phases.
    """

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        json_schema_extra={
            "anyOf": [
                {"required": ["user_prompt"]},
                {"required": ["messages"], "properties": {"messages": {"minItems": 1}}},
            ]
        },
    )

    stage_id: StageId | None = None
    system_prompt: str | None = None
    user_prompt: str | None = None
    messages: list[ChatMessage] | None = None
    model_container: str | None = Field(
        default=None, validation_alias=AliasChoices("model_container", "model")
    )
    stream: bool | None = None
    synthesis: bool = False
    prompts: tuple[str, str] | None = None
    max_tokens: tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]] | None = None
    temperature: (
        tuple[Annotated[float, Field(ge=0, le=2)], Annotated[float, Field(ge=0, le=2)]] | None
    ) = None
    reasoning: Literal["separate", "inline", "hidden"] = "separate"
    on_disconnect: Literal["cancel", "continue"] = "cancel"
    tools: list[str] | None = None
    tool_choice: str = "auto"
    max_tool_rounds: int = Field(default=1, ge=1, le=16)
    parallel_tool_calls: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _portable_json(cls, data: Any) -> Any:
        found = _unportable(data, "")
        if found is not None:
            where, what = found
            raise ValueError(f"{where or 'body'} {what}")
        return data

    @field_validator("max_tokens", "temperature", mode="before")
    @classmethod
    def _single_value_for_both_phases(cls, value: Any) -> Any:
        return _pair(value)

    @model_validator(mode="after")
    def _has_a_prompt(self) -> StageRequest:
        if not self.messages and not self.user_prompt:
            raise ValueError("give user_prompt or a non-empty messages list")
        return self

    def chat_messages(self, extra_system: str | None = None) -> list[dict[str, Any]]:
        """The conversation to send upstream, as plain OpenAI message dicts."""
        out: list[dict[str, Any]] = []
        system = "\n\n".join(p for p in (self.system_prompt, extra_system) if p)
        if system:
            out.append({"role": "system", "content": system})
        if self.messages:
            out.extend(m.model_dump(exclude_none=True) for m in self.messages)
        if self.user_prompt:
            out.append({"role": "user", "content": self.user_prompt})
        return out

    def phase_max_tokens(self, phase: int) -> int | None:
        """``max_tokens`` for phase 0 (chat or tool call) or 1 (synthesis)."""
        return self.max_tokens[phase] if self.max_tokens else None

    def phase_temperature(self, phase: int) -> float | None:
        """``temperature`` for phase 0 (chat or tool call) or 1 (synthesis)."""
        return self.temperature[phase] if self.temperature else None

    def phase_prompt(self, phase: int) -> str | None:
        """The extra system instruction for a phase, from ``prompts``."""
        return self.prompts[phase] or None if self.prompts else None
