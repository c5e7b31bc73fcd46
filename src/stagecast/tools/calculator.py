"""A safe arithmetic evaluator for the ``calculate`` tool: ``ast`` parsing and a whitelist.

Nothing is ever passed to ``eval``. Only numbers, ``+ - * / // % **``, unary signs,
parentheses, a few math functions and constants are accepted, and every intermediate result is
bounded so that inputs such as ``9**9**9`` are refused at once instead of eating the CPU.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

from stagecast.errors import ToolError

Number = int | float

MAX_EXPRESSION_LENGTH = 500
# Integers beyond this many bits are refused: big enough for any everyday calculation, small
# enough that one multiplication or power stays in the microseconds.
MAX_INT_BITS = 4096

CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau}


def _round(value: Number, ndigits: Number | None = None) -> Number:
    if ndigits is None:
        return round(value)
    if not isinstance(ndigits, int):
        raise ToolError("round() takes a whole number of digits")
    return round(value, ndigits)


def _log(value: Number, base: Number | None = None) -> float:
    return math.log(value) if base is None else math.log(value, base)


def _min(*values: Number) -> Number:
    if not values:
        raise ToolError("min() needs at least one number")
    return min(values)


def _max(*values: Number) -> Number:
    if not values:
        raise ToolError("max() needs at least one number")
    return max(values)


FUNCTIONS: dict[str, Callable[..., Number]] = {
    "sqrt": math.sqrt,
    "abs": abs,
    "round": _round,
    "min": _min,
    "max": _max,
    "floor": math.floor,
    "ceil": math.ceil,
    "exp": math.exp,
    "log": _log,
    "log10": math.log10,
    "log2": math.log2,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "asin": math.asin,
    "acos": math.acos,
    "atan": math.atan,
    "hypot": math.hypot,
}

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}

_KINDS: dict[type[ast.AST], str] = {
    ast.Attribute: "attribute access",
    ast.Subscript: "indexing",
    ast.Compare: "comparison",
    ast.BoolOp: "and/or",
    ast.IfExp: "a conditional expression",
    ast.Lambda: "lambda",
    ast.Starred: "unpacking",
    ast.NamedExpr: "assignment",
    ast.List: "a list",
    ast.Tuple: "a tuple",
    ast.Dict: "a dict",
    ast.Set: "a set",
}

_SYMBOLS: dict[type[ast.operator], str] = {
    ast.BitXor: "^",
    ast.BitAnd: "&",
    ast.BitOr: "|",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.MatMult: "@",
}


def evaluate(expression: str) -> Number:
    """Evaluate an arithmetic expression; anything unsafe or invalid is a :class:`ToolError`.

    ``^`` is read as a power, as people (and models) usually mean it.
    """
    if not isinstance(expression, str) or not expression.strip():
        raise ToolError("the expression is empty")
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise ToolError(f"the expression is longer than {MAX_EXPRESSION_LENGTH} characters")
    source = expression.strip().replace("^", "**")
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        raise ToolError(f"invalid expression {expression!r}: {exc.msg}") from exc
    except (ValueError, RecursionError, MemoryError) as exc:
        raise ToolError(f"invalid expression {expression!r}") from exc
    try:
        result = _eval(tree.body)
    except ToolError:
        raise
    except ZeroDivisionError as exc:
        raise ToolError(f"division by zero in {expression!r}") from exc
    except OverflowError as exc:
        raise ToolError(f"the result of {expression!r} is too large") from exc
    except (ValueError, TypeError, ArithmeticError) as exc:
        raise ToolError(f"cannot evaluate {expression!r}: {exc}") from exc
    except RecursionError as exc:
        raise ToolError(f"the expression {expression!r} is nested too deeply") from exc
    return result


def _eval(node: ast.expr) -> Number:
    if isinstance(node, ast.Constant):
        value = node.value
        # bool is an int subclass; True + 1 is not arithmetic anyone means.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ToolError(f"only numbers are allowed, not {value!r}")
        return _checked(value)
    if isinstance(node, ast.BinOp):
        op_type = type(node.op)
        fn = _BINARY.get(op_type)
        if fn is None:
            raise ToolError(f"operator {_SYMBOLS.get(op_type, op_type.__name__)!r} is not allowed")
        left = _eval(node.left)
        right = _eval(node.right)
        if op_type is ast.Pow:
            _check_power(left, right)
        return _checked(fn(left, right))
    if isinstance(node, ast.UnaryOp):
        operand = _eval(node.operand)
        if isinstance(node.op, ast.UAdd):
            return operand
        if isinstance(node.op, ast.USub):
            return -operand
        raise ToolError(f"operator {type(node.op).__name__} is not allowed")
    if isinstance(node, ast.Name):
        if node.id in CONSTANTS:
            return CONSTANTS[node.id]
        raise ToolError(
            f"unknown name {node.id!r}; allowed names: {', '.join([*CONSTANTS, *FUNCTIONS])}"
        )
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            shown = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
            raise ToolError(
                f"function {shown!r} is not allowed; allowed functions: {', '.join(FUNCTIONS)}"
            )
        if node.keywords:
            raise ToolError(f"{node.func.id}() takes no keyword arguments here")
        args = [_eval(arg) for arg in node.args]
        return _checked(FUNCTIONS[node.func.id](*args))
    kind = _KINDS.get(type(node), type(node).__name__)
    raise ToolError(f"{kind} is not allowed in an arithmetic expression: {ast.unparse(node)!r}")


def _check_power(base: Number, exponent: Number) -> None:
    """Refuse powers whose result would be huge, before computing them."""
    if isinstance(exponent, int) and isinstance(base, int):
        if abs(base) > 1 and exponent > 0:
            bits = exponent * math.log2(abs(base))
            if bits > MAX_INT_BITS:
                raise ToolError(f"the result of {base}**{exponent} is too large")
        return
    # Float powers overflow to an OverflowError by themselves; only a huge int exponent
    # can still be slow to reach it.
    if isinstance(exponent, int) and exponent.bit_length() > 64:
        raise ToolError(f"the exponent {exponent} is too large")


def _checked(value: Any) -> Number:
    """Accept only real, finite, bounded numbers as (intermediate) results."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        if value.bit_length() > MAX_INT_BITS:
            raise ToolError("the result is too large")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ToolError("the result is not a finite number")
        return value
    if isinstance(value, complex):
        raise ToolError("the result is not a real number")
    raise ToolError(f"unexpected result type {type(value).__name__}")
