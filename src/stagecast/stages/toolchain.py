"""Tool stages (modes 3-6): tool call -> execution -> optional synthesis, over N rounds.

Round 1 offers the tools with the request's ``tool_choice`` and the tool-phase parameters
(``max_tokens[0]``, ``temperature[0]``, ``prompts[0]``). Each later call uses the synthesis
parameters (index 1) and still offers tools while rounds remain; the last call offers none,
so ``max_tool_rounds`` is a hard limit. Without ``synthesis`` the stage ends after the first
round with the tool results (the original's tool-call mode).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from stagecast.backends.base import ChatCall
from stagecast.errors import InvalidRequestError, StagecastError
from stagecast.protocol.requests import StageRequest
from stagecast.stages.context import StageContext, StageOutcome
from stagecast.stages.normalise import ChunkNormaliser
from stagecast.stages.relay import relay
from stagecast.tools.assembly import AssembledCall, ToolCallAssembler
from stagecast.tools.execution import ToolOutcome, execute_calls
from stagecast.tools.registry import ToolRegistry


class NoToolCallError(StagecastError):
    """Tool-only mode, and the model called no tool (the original's "No tools called.")."""

    code = "no_tool_call"
    # The stage itself worked: the completion route answers 200 with the original's
    # {"type": "error", "message": "No tools called."} result.
    status_code = 200


class ToolPolicy:
    """The tools a stage may use and how long each may run."""

    def __init__(self, registry: ToolRegistry, *, timeout: float, max_concurrency: int) -> None:
        self.registry = registry
        self.timeout = timeout
        self.max_concurrency = max_concurrency

    def select(self, names: list[str] | None) -> list[str]:
        """The requested tools (all by default); unknown names are a 422-worthy error."""
        available = self.registry.names()
        if names is None:
            return available
        unknown = [n for n in names if n not in available]
        if unknown:
            raise InvalidRequestError(
                f"unknown tools {unknown}; available tools: {', '.join(available) or 'none'}",
                code="unknown_tool",
            )
        return list(names)


def tool_choice_value(choice: str, tools: list[str]) -> Any:
    """The OpenAI ``tool_choice`` for a request's choice (a mode or a tool name)."""
    if choice in ("auto", "none", "required"):
        return choice
    if choice not in tools:
        raise InvalidRequestError(
            f"tool_choice {choice!r} is neither auto, none, required nor an enabled tool "
            f"({', '.join(tools) or 'none enabled'})",
            code="invalid_tool_choice",
        )
    return {"type": "function", "function": {"name": choice}}


class ToolchainProducer:
    """The toolchain producer bound to a tool policy."""

    def __init__(self, policy: ToolPolicy) -> None:
        self.policy = policy

    def validate(self, request: StageRequest) -> None:
        """Reject unknown tools and tool choices before any stream starts (422)."""
        tool_choice_value(request.tool_choice, self.policy.select(request.tools))

    async def __call__(self, ctx: StageContext) -> StageOutcome:
        return await _Toolchain(ctx, self.policy).run()


def make_toolchain(policy: ToolPolicy) -> ToolchainProducer:
    """The toolchain producer bound to a tool policy."""
    return ToolchainProducer(policy)


class _Toolchain:
    def __init__(self, ctx: StageContext, policy: ToolPolicy) -> None:
        self.ctx = ctx
        self.policy = policy
        req = ctx.request
        self.tools = policy.select(req.tools)
        self.choice = tool_choice_value(req.tool_choice, self.tools)
        self.specs = policy.registry.specs(self.tools)
        self.prefix = ctx.prefix("tool_results")
        self.usage: dict[str, int] = {}
        self.summary: dict[str, Any] = {}
        self.details: list[dict[str, Any]] = []

    async def run(self) -> StageOutcome:
        ctx, req = self.ctx, self.ctx.request
        messages = req.chat_messages(req.phase_prompt(0))
        rounds = req.max_tool_rounds if req.synthesis else 1
        text = reasoning = ""
        finish: str | None = None
        for round_no in range(1, rounds + 2):
            offer = round_no <= rounds and self.choice != "none" and bool(self.specs)
            phase = 0 if round_no == 1 else 1
            if round_no == 2 and req.phase_prompt(1):
                messages = [{"role": "system", "content": req.phase_prompt(1)}, *messages]
            call = ChatCall(
                messages=messages,
                max_tokens=req.phase_max_tokens(phase),
                temperature=req.phase_temperature(phase),
                tools=self.specs if offer else None,
                tool_choice=(self.choice if round_no == 1 else "auto") if offer else None,
                parallel_tool_calls=req.parallel_tool_calls if offer else None,
                stage_id=ctx.stage_id,
            )
            calls, norm = await self._model_call(call, assemble=offer)
            text, reasoning, finish = norm.text, norm.reasoning, norm.finish_reason
            if not calls:
                if not req.synthesis:
                    raise NoToolCallError(
                        "No tools called." + (f" The model answered: {text[:300]}" if text else "")
                    )
                break
            outcomes = await self._execute(calls, round_no)
            if not req.synthesis:
                break
            messages = [
                *messages,
                _assistant_message(text, calls),
                *(o.message() for o in outcomes),
            ]
        return StageOutcome(
            text=text,
            reasoning=reasoning,
            usage=self.usage or None,
            finish_reason=finish,
            tool_results=self.summary,
            tool_calls=self.details,
        )

    async def _model_call(
        self, call: ChatCall, *, assemble: bool
    ) -> tuple[list[AssembledCall], ChunkNormaliser]:
        ctx = self.ctx
        stats = ctx.stats
        assembler = ToolCallAssembler(self.tools) if assemble else None
        hook = _AssemblyHook(assembler)
        norm = ChunkNormaliser(ctx.request.reasoning, hook=hook)
        await relay(ctx, call, norm, "tool_completion_chunk", "tool_results")
        emit = ctx.emit
        if assembler is not None and not hook.finished:
            # The stream ended without a finish_reason chunk: release what is held back.
            deltas, text = hook.finish()
            if deltas or text:
                await emit("tool_completion_chunk", self.prefix + _tail_chunk(deltas, text) + b"}")
                if text:
                    norm.text_parts.append(text)
        _add_usage(self.usage, norm.usage)
        stats.completion_tokens += _tokens(norm.usage)
        return (assembler.calls if assembler is not None else []), norm

    async def _execute(self, calls: list[AssembledCall], round_no: int) -> list[ToolOutcome]:
        outcomes = await execute_calls(
            self.policy.registry,
            calls,
            allowed=set(self.tools),
            default_timeout=self.policy.timeout,
            max_concurrency=self.policy.max_concurrency,
        )
        self.ctx.stats.tools_run.extend(o.name for o in outcomes)
        summary = {o.id: o.summary_value() for o in outcomes}
        details = [o.detail() for o in outcomes]
        self.summary.update(summary)
        self.details.extend(details)
        await self.ctx.emit(
            "tool_summary",
            self.ctx.payload(tool_summary=summary, tool_calls=details, round=round_no),
        )
        return outcomes


class _AssemblyHook:
    """Normaliser hook: turns every dialect of tool call into proper ``tool_calls`` deltas."""

    def __init__(self, assembler: ToolCallAssembler | None) -> None:
        self.assembler = assembler
        self.finished = False

    def finish(self) -> tuple[list[dict[str, Any]], str | None]:
        assert self.assembler is not None
        self.finished = True
        return self.assembler.finish()

    def __call__(self, choice: dict[str, Any], delta: dict[str, Any]) -> bool:
        assembler = self.assembler
        if assembler is None:
            # No tools were offered: a model that still emits calls gets them dropped.
            changed = delta.pop("tool_calls", None) is not None
            return delta.pop("function_call", None) is not None or changed
        content = delta.get("content")
        has_calls = "tool_calls" in delta or "function_call" in delta
        ending = bool(choice.get("finish_reason")) and not self.finished
        if not has_calls and not content and not ending:
            return False
        deltas, text = assembler.feed(delta) if (has_calls or content) else ([], None)
        if ending:
            more, rest = self.finish()
            deltas += more
            text = (text or "") + (rest or "") or None
            if assembler.calls:
                choice["finish_reason"] = "tool_calls"
        delta.pop("function_call", None)
        if deltas:
            delta["tool_calls"] = deltas
        else:
            delta.pop("tool_calls", None)
        delta["content"] = text
        return has_calls or ending or text != content


def _tail_chunk(deltas: list[dict[str, Any]], text: str | None) -> bytes:
    delta: dict[str, Any] = {}
    if deltas:
        delta["tool_calls"] = deltas
    if text:
        delta["content"] = text
    return orjson.dumps(
        {
            "id": "chatcmpl-stagecast",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": "stagecast",
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
        }
    )


def _assistant_message(text: str, calls: list[AssembledCall]) -> dict[str, Any]:
    return {
        "role": "assistant",
        # "" rather than null: some servers (llama_cpp.server) reject a null content.
        "content": text or "",
        "tool_calls": [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in calls
        ],
    }


def _add_usage(total: dict[str, int], usage: dict[str, Any] | None) -> None:
    if not usage:
        return
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        value = usage.get(key)
        if isinstance(value, int):
            total[key] = total.get(key, 0) + value


def _tokens(usage: dict[str, Any] | None) -> int:
    value = usage.get("completion_tokens") if usage else None
    return value if isinstance(value, int) else 0
