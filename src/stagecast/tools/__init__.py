"""Server-side tools of tool-calling stages: ``@tool``, the registry, the builtins, tool-call
assembly from streamed deltas, and concurrent execution."""

from stagecast.tools.assembly import AssembledCall, ToolCallAssembler, new_call_id
from stagecast.tools.builtins import ToolHttp, builtin_tools
from stagecast.tools.calculator import evaluate
from stagecast.tools.execution import ToolOutcome, execute_calls, parse_arguments
from stagecast.tools.registry import Tool, ToolRegistry, build_registry, tool

__all__ = [
    "AssembledCall",
    "Tool",
    "ToolCallAssembler",
    "ToolHttp",
    "ToolOutcome",
    "ToolRegistry",
    "build_registry",
    "builtin_tools",
    "evaluate",
    "execute_calls",
    "new_call_id",
    "parse_arguments",
    "tool",
]
