"""Tools from typed Python functions (``@tool``) and the registry a gateway offers them from.

A tool is a plain function, sync or async, whose parameters are annotated. Its JSON schema is
built by pydantic (``create_model``) from those annotations; descriptions come from the
docstring and from ``Annotated[..., Field(description=...)]`` or ``Field`` defaults.

``@tool`` returns a :class:`Tool` that still behaves like the function when called directly
(``__call__`` forwards unchanged, without validation), so a decorated function stays usable and
testable as plain Python, while ``isinstance(obj, Tool)`` is how :meth:`ToolRegistry.load_module`
finds tools in a module.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import importlib
import inspect
import re
import typing
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from stagecast.errors import ConfigError, RequestError, ToolError

if TYPE_CHECKING:
    from stagecast.config import ToolsConfig
    from stagecast.tools.builtins import ToolHttp

P = ParamSpec("P")
R = TypeVar("R")

# OpenAI's rule for function names; other servers accept at least this.
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Keys whose values are data, not sub-schemas: their contents must not lose a "title" key.
_DATA_KEYS = frozenset({"default", "enum", "const", "examples"})
# Keys whose values map names to sub-schemas (the names themselves may be "title").
_SCHEMA_MAPS = frozenset({"properties", "$defs", "definitions", "patternProperties"})


class Tool(Generic[P, R]):
    """A function the model may call: name, description, JSON schema and a validated invoker.

    Calling the object calls the original function as-is; :meth:`invoke` is the path the
    gateway uses (validation, then the call, sync functions in a worker thread).
    """

    name: str
    description: str
    parameters: dict[str, Any]
    timeout: float | None
    is_async: bool
    function: Callable[P, R]

    def __init__(
        self,
        function: Callable[P, R],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout: float | None = None,
    ) -> None:
        # First, so that attributes copied from the function cannot shadow ours; afterwards
        # the tool looks like the function to help(), inspect.signature() and pytest.
        functools.update_wrapper(self, function)
        self.function = function
        self.name = name if name is not None else function.__name__
        if not _NAME_RE.match(self.name):
            raise ValueError(f"tool name {self.name!r} must be 1-64 letters, digits, '_' or '-'")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"tool {self.name!r}: timeout must be positive, got {timeout}")
        self.description = description if description is not None else _doc_summary(function)
        self.timeout = timeout
        self.is_async = inspect.iscoroutinefunction(function)
        self._model, self._params = _arguments_model(function, self.name)
        schema = _strip_titles(self._model.model_json_schema())
        # The usual order (type, properties, required) first: it reads better in GET /v1/tools.
        self.parameters = {
            "type": "object",
            "properties": schema.pop("properties", {}),
            "required": schema.pop("required", []),
            **{k: v for k, v in schema.items() if k != "type"},
        }

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the original function directly (no validation, no thread)."""
        return self.function(*args, **kwargs)

    def __repr__(self) -> str:
        kind = "async" if self.is_async else "sync"
        return f"<Tool {self.name!r} ({kind})>"

    def spec(self) -> dict[str, Any]:
        """The OpenAI tool spec: ``{"type": "function", "function": {...}}`` (a fresh copy,
        so a caller may adapt it for one request)."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": copy.deepcopy(self.parameters),
            },
        }

    def describe(self) -> dict[str, Any]:
        """Name, description and parameters, as listed by ``GET /v1/tools``."""
        return {
            "name": self.name,
            "description": self.description,
            "parameters": copy.deepcopy(self.parameters),
        }

    def validate(self, arguments: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        """Validate model-supplied arguments; returns ``(args, kwargs)`` for the function.

        Raises :class:`ToolError` (code ``invalid_arguments``) naming each bad field. Unknown
        keys are ignored: small models often add one, and the call is still meaningful.
        """
        if not isinstance(arguments, dict):
            raise ToolError(
                f"arguments for {self.name!r} must be a JSON object, "
                f"got {type(arguments).__name__}",
                code="invalid_arguments",
            )
        try:
            model = self._model.model_validate(arguments)
        except ValidationError as exc:
            raise ToolError(
                f"invalid arguments for {self.name!r}: {describe_validation_error(exc)}",
                code="invalid_arguments",
            ) from exc
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for field, (param, positional) in self._params.items():
            value = getattr(model, field)
            if positional:
                args.append(value)
            else:
                kwargs[param] = value
        return args, kwargs

    async def invoke(self, arguments: dict[str, Any]) -> Any:
        """Validate ``arguments`` and call the function; sync functions run in a thread.

        Cancelling the caller cancels an async tool at its next ``await``; a sync tool's
        thread cannot be interrupted and runs to its end in the background.
        """
        args, kwargs = self.validate(arguments)
        if self.is_async:
            result: Any = await typing.cast(Callable[..., Awaitable[Any]], self.function)(
                *args, **kwargs
            )
        else:
            result = await asyncio.to_thread(self.function, *args, **kwargs)
        if inspect.isawaitable(result):
            # A sync wrapper around a coroutine function (e.g. a decorator without wraps).
            result = await result
        return result


@overload
def tool(function: Callable[P, R], /) -> Tool[P, R]: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
) -> Callable[[Callable[P, R]], Tool[P, R]]: ...


def tool(
    function: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
) -> Tool[P, R] | Callable[[Callable[P, R]], Tool[P, R]]:
    """Turn a typed function into a :class:`Tool`: ``@tool`` or ``@tool(name=..., ...)``.

    ``description`` defaults to the first paragraph of the docstring; ``timeout`` (seconds)
    overrides the execution default for this tool. Annotations must be resolvable from the
    function's module globals (pydantic builds the schema from them).
    """

    def wrap(fn: Callable[P, R]) -> Tool[P, R]:
        return Tool(fn, name=name, description=description, timeout=timeout)

    if function is not None:
        return wrap(function)
    return wrap


class ToolRegistry:
    """Named tools, in registration order."""

    def __init__(self, tools: Iterable[Tool[..., Any]] = ()) -> None:
        self._tools: dict[str, Tool[..., Any]] = {}
        for t in tools:
            self.register(t)

    def register(self, tool: Tool[..., Any]) -> None:
        """Add a tool; a different tool under a name already taken is a :class:`ConfigError`."""
        if not isinstance(tool, Tool):
            raise TypeError(f"expected a Tool (use @tool), got {type(tool).__name__}")
        existing = self._tools.get(tool.name)
        if existing is not None and existing is not tool:
            raise ConfigError(
                f"two tools are named {tool.name!r} "
                f"({_origin(existing.function)} and {_origin(tool.function)})"
            )
        self._tools[tool.name] = tool

    def get(self, name: str) -> Tool[..., Any] | None:
        """The tool called ``name``, or None."""
        return self._tools.get(name)

    def names(self) -> list[str]:
        """Every tool name, in registration order."""
        return list(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __len__(self) -> int:
        return len(self._tools)

    def __iter__(self) -> Iterator[Tool[..., Any]]:
        return iter(list(self._tools.values()))

    def specs(self, names: list[str] | None = None) -> list[dict[str, Any]]:
        """OpenAI tool specs for ``names`` (all tools when None).

        An unknown name is a :class:`RequestError` (code ``unknown_tool``), since names here
        come from a request's ``tools`` list.
        """
        return [t.spec() for t in self._select(names)]

    def describe(self) -> list[dict[str, Any]]:
        """Name, description and parameters of every tool (for ``GET /v1/tools``)."""
        return [t.describe() for t in self._tools.values()]

    def subset(self, names: Iterable[str]) -> ToolRegistry:
        """A new registry holding only ``names`` (registration order kept)."""
        return ToolRegistry(self._select(list(names)))

    def load_module(self, module_name: str) -> list[str]:
        """Import a module and register every :class:`Tool` at its top level.

        Returns the names registered. A module that cannot be imported, or that defines no
        tools (almost always a wrong name in the configuration), is a :class:`ConfigError`.
        """
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            raise ConfigError(
                f"cannot import tool module {module_name!r}: {type(exc).__name__}: {exc}"
            ) from exc
        found = [value for value in vars(module).values() if isinstance(value, Tool)]
        if not found:
            raise ConfigError(
                f"tool module {module_name!r} defines no tools (decorate functions with @tool)"
            )
        for t in found:
            self.register(t)
        return [t.name for t in found]

    def _select(self, names: list[str] | None) -> list[Tool[..., Any]]:
        if names is None:
            return list(self._tools.values())
        unknown = [n for n in names if n not in self._tools]
        if unknown:
            raise RequestError(
                f"unknown tool(s): {', '.join(unknown)}; available: {self._available()}",
                code="unknown_tool",
            )
        wanted = set(names)
        return [t for n, t in self._tools.items() if n in wanted]

    def _available(self) -> str:
        return ", ".join(self._tools) or "(none)"


def build_registry(config: ToolsConfig, http: ToolHttp) -> ToolRegistry:
    """The registry a gateway serves: builtins (bound to ``http``), then ``config.modules``,
    then restricted to ``config.enabled`` when that is set."""
    # Imported here: builtins imports this module for @tool.
    from stagecast.tools.builtins import builtin_tools

    registry = ToolRegistry()
    if config.builtins:
        for t in builtin_tools(http):
            registry.register(t)
    for module_name in config.modules:
        registry.load_module(module_name)
    if config.enabled is None:
        return registry
    unknown = [n for n in config.enabled if n not in registry]
    if unknown:
        raise ConfigError(
            f"tools.enabled names unknown tool(s): {', '.join(unknown)}; "
            f"available: {registry._available()}"
        )
    return registry.subset(config.enabled)


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem, ``field.path: message``, for a model to read and fix."""
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "(arguments)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def _doc_summary(function: Callable[..., Any]) -> str:
    doc = inspect.getdoc(function)
    if not doc:
        return ""
    first = doc.strip().split("\n\n", 1)[0]
    return " ".join(line.strip() for line in first.splitlines()).strip()


def _arguments_model(
    function: Callable[..., Any], tool_name: str
) -> tuple[type[BaseModel], dict[str, tuple[str, bool]]]:
    """A pydantic model of the parameters, and field -> (parameter, positional-only).

    Fields get neutral names (``p0``, ``p1``...) with the parameter name as alias, so that
    parameters such as ``json`` or ``schema`` cannot collide with ``BaseModel`` attributes.
    """
    try:
        hints = typing.get_type_hints(function, include_extras=True)
    except Exception as exc:
        raise TypeError(f"tool {tool_name!r}: cannot resolve annotations: {exc}") from exc
    fields: dict[str, Any] = {}
    params: dict[str, tuple[str, bool]] = {}
    for i, param in enumerate(inspect.signature(function).parameters.values()):
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"tool {tool_name!r}: *args and **kwargs cannot be described")
        annotation = hints.get(param.name, Any)
        field = f"p{i}"
        default: Any = ... if param.default is param.empty else param.default
        fields[field] = (typing.Annotated[annotation, Field(alias=param.name)], default)
        params[field] = (param.name, param.kind is param.POSITIONAL_ONLY)
    model = create_model(
        f"{tool_name}_arguments",
        __config__=ConfigDict(extra="ignore", arbitrary_types_allowed=False),
        **fields,
    )
    return typing.cast(type[BaseModel], model), params


def _strip_titles(schema: Any) -> Any:
    """Drop pydantic's generated ``title`` keys, which only add tokens to every request."""
    if isinstance(schema, list):
        return [_strip_titles(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "title":
            continue
        if key in _DATA_KEYS:
            out[key] = value
        elif key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: _strip_titles(sub) for name, sub in value.items()}
        else:
            out[key] = _strip_titles(value)
    return out


def _origin(function: Callable[..., Any]) -> str:
    module = getattr(function, "__module__", "?")
    qualname = getattr(function, "__qualname__", repr(function))
    return f"{module}.{qualname}"
