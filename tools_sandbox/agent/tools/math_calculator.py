"""``math_calculator``: evaluate an arithmetic expression safely, without ``eval``.

The expression is parsed with ``ast.parse(mode="eval")`` and the whole tree is checked against a
whitelist *before* anything is computed; only then is it evaluated by walking the tree. Allowed:

* int and float literals (no complex, strings, bytes, booleans or ``None``);
* ``+ - * / // % **``, unary ``+``/``-`` and parentheses (``^`` is refused with a hint to use ``**``);
* names: the caller's ``variables`` and the constants ``pi``, ``e`` and ``tau`` (a variable of the
  same name takes precedence over a constant);
* plain calls (no keywords, no ``*args``) of the functions in :data:`FUNCTIONS`.

Everything else (attribute access, subscripts, lambdas, comprehensions, comparisons, other calls)
raises :class:`~tools_sandbox.agent.errors.ToolInputError` naming what was refused. Arithmetic
failures (division by zero, math domain errors, overflow, an infinite or nan result) raise
:class:`~tools_sandbox.agent.errors.ToolFailure`.

Limits (module constants below) keep every evaluation small and fast: the expression length, the
number of AST nodes, the nesting depth, integer exponents, the size of integers (checked with
``bit_length`` before any conversion or power is computed) and the factorial argument. Huge powers
such as ``9**9**9`` are refused by a pre-check, never computed.

stdlib only: this module runs inside the sandbox container.
"""

from __future__ import annotations

import ast
import keyword
import math
from collections.abc import Callable
from typing import Any

from officeray.limits import MAX_EXPRESSION_CHARS
from tools_sandbox.agent.errors import ToolFailure, ToolInputError

Number = int | float


MAX_AST_NODES = 300
"""Most expression nodes (numbers, names, operations, calls) in one expression."""

MAX_AST_DEPTH = 200
"""Deepest nesting of expression nodes (``1+1+...`` with n terms nests n-1 additions). Evaluation
recurses once per level, so this also bounds the evaluator's stack use."""

MAX_PAREN_DEPTH = 50
"""Deepest nesting of brackets in the source text, checked before parsing."""

MAX_EXPONENT = 10_000
"""Largest ``|exponent|`` accepted in an integer power ``int ** int``."""

MAX_INT_DIGITS = 4_000
"""Most decimal digits of any integer, intermediate or final. Below CPython's default limit for
int-to-str conversion (4300 digits), so every result can be written as JSON."""

MAX_INT_BITS = int(MAX_INT_DIGITS * math.log2(10))
""":data:`MAX_INT_DIGITS` in bits: an int whose ``bit_length()`` is at most this has at most that many
digits. Sizes are checked in bits so that no huge int is ever converted to text."""

MAX_FACTORIAL_ARG = 1_000
"""Largest argument of ``factorial`` (1000! has 2568 digits)."""

MAX_VARIABLES = 100
"""Most entries in ``variables``."""

CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau}
"""Names always defined (a caller's variable of the same name overrides them)."""

_ALLOWED_BINOPS: dict[type[ast.operator], str] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.Pow: "**",
}

_REFUSED_BINOPS: dict[type[ast.operator], str] = {
    ast.BitXor: "'^' (bitwise xor) is not supported; use ** for powers",
    ast.BitAnd: "'&' (bitwise and) is not supported",
    ast.BitOr: "'|' (bitwise or) is not supported",
    ast.LShift: "'<<' (shift) is not supported",
    ast.RShift: "'>>' (shift) is not supported",
    ast.MatMult: "'@' (matrix multiplication) is not supported",
}

_NODE_NAMES: dict[type[ast.AST], str] = {
    ast.Attribute: "attribute access",
    ast.Subscript: "subscripts / indexing",
    ast.Slice: "slices",
    ast.Lambda: "lambda",
    ast.ListComp: "list comprehensions",
    ast.SetComp: "set comprehensions",
    ast.DictComp: "dict comprehensions",
    ast.GeneratorExp: "generator expressions",
    ast.List: "lists",
    ast.Tuple: "tuples",
    ast.Set: "sets",
    ast.Dict: "dicts",
    ast.Compare: "comparisons",
    ast.BoolOp: "'and' / 'or'",
    ast.IfExp: "conditional expressions",
    ast.NamedExpr: "assignment expressions (:=)",
    ast.JoinedStr: "f-strings",
    ast.FormattedValue: "f-strings",
    ast.Starred: "starred arguments",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
}


def _check_int(value: int, what: str) -> int:
    if value.bit_length() > MAX_INT_BITS:
        raise ToolInputError(f"{what} has more than {MAX_INT_DIGITS} digits; refused")
    return value


def _check_number(value: Any, what: str) -> Number:
    """Refuse bools, complex numbers, non-finite floats and oversized ints."""
    if isinstance(value, complex):
        raise ToolFailure(f"{what} is a complex number; only real results are supported")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ToolFailure(f"{what} is not a number: {type(value).__name__}")
    if isinstance(value, int):
        return _check_int(value, what)
    if math.isnan(value):
        raise ToolFailure(f"{what} is not a number (nan)")
    if math.isinf(value):
        raise ToolFailure(f"{what} overflowed to infinity")
    return value


# --- functions -------------------------------------------------------------------------------------


def _round(x: Number, ndigits: Number | None = None) -> Number:
    if ndigits is None:
        return round(x)
    if not isinstance(ndigits, int):
        raise ToolInputError("round(): the number of digits must be an integer")
    if abs(ndigits) > MAX_INT_DIGITS:
        raise ToolInputError(f"round(): the number of digits must be within ±{MAX_INT_DIGITS}")
    return round(x, ndigits)


def _log(x: Number, base: Number | None = None) -> float:
    return math.log(x) if base is None else math.log(x, base)


def _factorial(x: Number) -> int:
    if isinstance(x, float):
        if not x.is_integer():
            raise ToolFailure(f"factorial() is only defined for integers, got {x!r}")
        x = int(x)
    if x < 0:
        raise ToolFailure("factorial() is not defined for negative numbers")
    if x > MAX_FACTORIAL_ARG:
        raise ToolInputError(f"factorial() argument {x} is over the limit of {MAX_FACTORIAL_ARG}")
    return math.factorial(x)


def _min(*args: Number) -> Number:
    return min(args)


def _max(*args: Number) -> Number:
    return max(args)


FUNCTIONS: dict[str, tuple[Callable[..., Number], int, int | None]] = {
    # name: (implementation, minimum number of arguments, maximum or None for any)
    "abs": (abs, 1, 1),
    "round": (_round, 1, 2),
    "min": (_min, 1, None),
    "max": (_max, 1, None),
    "sqrt": (math.sqrt, 1, 1),
    "log": (_log, 1, 2),
    "log10": (math.log10, 1, 1),
    "log2": (math.log2, 1, 1),
    "exp": (math.exp, 1, 1),
    "sin": (math.sin, 1, 1),
    "cos": (math.cos, 1, 1),
    "tan": (math.tan, 1, 1),
    "asin": (math.asin, 1, 1),
    "acos": (math.acos, 1, 1),
    "atan": (math.atan, 1, 1),
    "floor": (math.floor, 1, 1),
    "ceil": (math.ceil, 1, 1),
    "factorial": (_factorial, 1, 1),
    "hypot": (math.hypot, 1, None),
}
"""The callable functions: name -> (implementation, min args, max args or None)."""


# --- validation ------------------------------------------------------------------------------------


def _check_variables(variables: dict[str, Any] | None) -> dict[str, Number]:
    if variables is None:
        return {}
    if not isinstance(variables, dict):
        raise ToolInputError("variables must be an object mapping names to numbers")
    if len(variables) > MAX_VARIABLES:
        raise ToolInputError(f"too many variables ({len(variables)}; at most {MAX_VARIABLES})")
    checked: dict[str, Number] = {}
    for name, value in variables.items():
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise ToolInputError(f"variable name {name!r} is not a valid identifier")
        if name in FUNCTIONS:
            raise ToolInputError(f"variable name {name!r} shadows the function {name}(); rename it")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ToolInputError(f"variable {name!r} must be a number, got {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ToolInputError(f"variable {name!r} must be finite, got {value!r}")
        if isinstance(value, int):
            _check_int(value, f"variable {name!r}")
        checked[name] = value
    return checked


def _check_brackets(expression: str) -> None:
    depth = 0
    for char in expression:
        if char in "([{":
            depth += 1
            if depth > MAX_PAREN_DEPTH:
                raise ToolInputError(f"brackets are nested more than {MAX_PAREN_DEPTH} deep")
        elif char in ")]}":
            depth -= 1


def _parse(expression: str) -> ast.Expression:
    if not isinstance(expression, str):
        raise ToolInputError(f"expression must be a string, got {type(expression).__name__}")
    if not expression.strip():
        raise ToolInputError("expression is empty")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolInputError(
            f"expression is {len(expression)} characters long; the limit is {MAX_EXPRESSION_CHARS}"
        )
    _check_brackets(expression)
    try:
        return ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        hint = "; use ** for powers" if "^" in expression else ""
        raise ToolInputError(f"invalid expression: {exc.msg} (column {exc.offset}){hint}") from None
    except (ValueError, MemoryError, RecursionError) as exc:
        raise ToolInputError(f"invalid expression: {exc}") from None


def _refuse(node: ast.AST) -> ToolInputError:
    name = _NODE_NAMES.get(type(node), type(node).__name__)
    return ToolInputError(f"{name} not allowed (column {getattr(node, 'col_offset', 0) + 1})")


_LITERAL_KINDS: dict[type, str] = {
    str: "string literals",
    bytes: "bytes literals",
    complex: "complex numbers",
    bool: "booleans",
}


def _validate_constant(node: ast.Constant) -> None:
    value = node.value
    if isinstance(value, bool) or not isinstance(value, int | float):
        kind = _LITERAL_KINDS.get(type(value), f"the constant {value!r}")
        raise ToolInputError(f"{kind} not allowed; only int and float numbers")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolInputError(f"number literal {value!r} is out of range")


def _validate_name(node: ast.Name, names: dict[str, Number]) -> None:
    if node.id not in names:
        if node.id in FUNCTIONS:
            raise ToolInputError(f"{node.id} is a function; call it as {node.id}(...)")
        known = ", ".join(sorted(names)) or "none"
        raise ToolInputError(f"name {node.id!r} is not defined (defined names: {known})")


def _validate_node(node: ast.expr, names: dict[str, Number]) -> None:
    """Refuse one node that is not in the whitelist (its children are checked separately)."""
    if isinstance(node, ast.Constant):
        _validate_constant(node)
    elif isinstance(node, ast.Name):
        _validate_name(node, names)
    elif isinstance(node, ast.BinOp):
        op = type(node.op)
        if op in _REFUSED_BINOPS:
            raise ToolInputError(_REFUSED_BINOPS[op])
        if op not in _ALLOWED_BINOPS:
            raise ToolInputError(f"operator {op.__name__} not allowed")
    elif isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, ast.UAdd | ast.USub):
            symbol = {ast.Not: "'not'", ast.Invert: "'~'"}.get(type(node.op), type(node.op).__name__)
            raise ToolInputError(f"unary operator {symbol} not allowed")
    elif isinstance(node, ast.Call):
        _validate_call(node)
    else:
        raise _refuse(node)


def _validate_call(node: ast.Call) -> None:
    if not isinstance(node.func, ast.Name):
        if isinstance(node.func, ast.Attribute):
            raise ToolInputError(f"attribute access ('.{node.func.attr}') not allowed")
        raise ToolInputError("only plain calls of the allowed functions are allowed")
    name = node.func.id
    if name not in FUNCTIONS:
        allowed = ", ".join(FUNCTIONS)
        raise ToolInputError(f"call of {name}() not allowed; allowed functions: {allowed}")
    if node.keywords:
        raise ToolInputError(f"{name}(): keyword arguments not allowed")
    if any(isinstance(arg, ast.Starred) for arg in node.args):
        raise ToolInputError(f"{name}(): starred arguments not allowed")
    _, least, most = FUNCTIONS[name]
    count = len(node.args)
    if count < least or (most is not None and count > most):
        wanted = f"{least}" if least == most else f"{least} to {most}" if most else f"at least {least}"
        raise ToolInputError(f"{name}() takes {wanted} argument(s), got {count}")


def _validate(tree: ast.Expression, names: dict[str, Number]) -> None:
    """Check the whole tree (iteratively, so a deep tree cannot exhaust the stack)."""
    count = 0
    stack: list[tuple[ast.expr, int]] = [(tree.body, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_AST_NODES:
            raise ToolInputError(f"expression has more than {MAX_AST_NODES} nodes")
        if depth > MAX_AST_DEPTH:
            raise ToolInputError(f"expression is nested more than {MAX_AST_DEPTH} levels deep")
        _validate_node(node, names)
        if isinstance(node, ast.BinOp):
            stack.extend([(node.left, depth + 1), (node.right, depth + 1)])
        elif isinstance(node, ast.UnaryOp):
            stack.append((node.operand, depth + 1))
        elif isinstance(node, ast.Call):
            stack.extend((arg, depth + 1) for arg in node.args)


# --- evaluation ------------------------------------------------------------------------------------


def _power(base: Number, exponent: Number) -> Number:
    if isinstance(base, int) and isinstance(exponent, int):
        if abs(exponent) > MAX_EXPONENT:
            raise ToolInputError(f"exponent {exponent} is over the limit of ±{MAX_EXPONENT}")
        # |base| ** exponent has at least (bit_length - 1) * exponent bits: refuse before computing.
        if exponent > 0 and (abs(base).bit_length() - 1) * exponent > MAX_INT_BITS:
            raise ToolInputError(f"result of a power would have more than {MAX_INT_DIGITS} digits")
        if exponent < 0 and base == 0:
            raise ToolFailure("division by zero: 0 raised to a negative power")
    result: Number = base**exponent
    return result


def _binop(op: ast.operator, left: Number, right: Number) -> Number:
    if isinstance(op, ast.Add):
        return left + right
    if isinstance(op, ast.Sub):
        return left - right
    if isinstance(op, ast.Mult):
        return left * right
    if isinstance(op, ast.Div):
        return left / right
    if isinstance(op, ast.FloorDiv):
        return left // right
    if isinstance(op, ast.Mod):
        return left % right
    return _power(left, right)


def _eval(node: ast.expr, names: dict[str, Number]) -> Number:
    if isinstance(node, ast.Constant):
        return _check_number(node.value, "number literal")
    if isinstance(node, ast.Name):
        return names[node.id]
    if isinstance(node, ast.UnaryOp):
        operand = _eval(node.operand, names)
        return -operand if isinstance(node.op, ast.USub) else +operand
    if isinstance(node, ast.BinOp):
        left = _eval(node.left, names)
        right = _eval(node.right, names)
        symbol = _ALLOWED_BINOPS[type(node.op)]
        try:
            value = _binop(node.op, left, right)
        except ZeroDivisionError:
            raise ToolFailure(f"division by zero in {_short(left)} {symbol} {_short(right)}") from None
        except OverflowError as exc:
            raise ToolFailure(f"overflow in {_short(left)} {symbol} {_short(right)}: {exc}") from None
        return _check_number(value, f"result of {symbol}")
    if isinstance(node, ast.Call):
        assert isinstance(node.func, ast.Name)  # guaranteed by _validate
        name = node.func.id
        args = [_eval(arg, names) for arg in node.args]
        function = FUNCTIONS[name][0]
        try:
            value = function(*args)
        except ZeroDivisionError:
            raise ToolFailure(f"division by zero in {name}()") from None
        except OverflowError as exc:
            raise ToolFailure(f"overflow in {name}(): {exc}") from None
        except ValueError as exc:
            raise ToolFailure(f"math domain error in {name}({', '.join(map(_short, args))}): {exc}") from None
        except TypeError as exc:
            raise ToolInputError(f"bad argument to {name}(): {exc}") from None
        return _check_number(value, f"result of {name}()")
    raise _refuse(node)  # unreachable after _validate


def _short(value: Number) -> str:
    if isinstance(value, int) and value.bit_length() > 64:
        return f"<int of {value.bit_length()} bits>"
    return repr(value)


def evaluate(expression: str, variables: dict[str, float] | None = None) -> dict[str, Any]:
    """Evaluate ``expression`` with the given ``variables``.

    Returns ``{"value": <int or float>, "expression": expression}``. Ints stay ints where the result
    is exact (``2**10`` -> 1024, ``7//2`` -> 3); true division gives a float. Raises
    :class:`ToolInputError` for anything outside the whitelist or over a limit and
    :class:`ToolFailure` for arithmetic failures (division by zero, domain errors, overflow).
    """
    names: dict[str, Number] = {**CONSTANTS, **_check_variables(variables)}
    tree = _parse(expression)
    _validate(tree, names)
    try:
        value = _eval(tree.body, names)
    except RecursionError:
        raise ToolInputError("expression is nested too deeply") from None
    return {"value": value, "expression": expression}
