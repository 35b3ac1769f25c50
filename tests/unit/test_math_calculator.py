"""math_calculator: values, ints vs floats, functions, variables, and refused abuse attempts."""

from __future__ import annotations

import math

import pytest

from tools_sandbox.agent.errors import ToolFailure, ToolInputError
from tools_sandbox.agent.tools import math_calculator
from tools_sandbox.agent.tools.math_calculator import evaluate


def value(expression: str, variables: dict[str, float] | None = None) -> int | float:
    return evaluate(expression, variables)["value"]


def test_result_format() -> None:
    assert evaluate("1 + 2") == {"value": 3, "expression": "1 + 2"}


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("2 ** 3 ** 2", 512),  # right associative
        ("-3 ** 2", -9),  # ** binds tighter than unary minus
        ("(-3) ** 2", 9),
        ("--3", 3),
        ("+-+3", -3),
        ("10 - 4 - 3", 3),  # left associative
        ("100 / 10 / 5", 2.0),
        ("7 % 3", 1),
        ("-7 // 2", -4),
        ("2 * (3 + 4) - 5 / (1 + 1)", 11.5),
        ("  42  ", 42),
    ],
)
def test_arithmetic_and_precedence(expression: str, expected: float) -> None:
    assert value(expression) == expected


@pytest.mark.parametrize(
    ("expression", "expected", "kind"),
    [
        ("2 ** 10", 1024, int),
        ("7 // 2", 3, int),
        ("7 % 2", 1, int),
        ("6 / 3", 2.0, float),  # true division always gives a float
        ("7 / 2", 3.5, float),
        ("2 ** -2", 0.25, float),
        ("2 ** 100", 2**100, int),  # exact big ints
        ("1.5 * 2", 3.0, float),
        ("abs(-3)", 3, int),
        ("floor(2.7)", 2, int),
        ("ceil(2.1)", 3, int),
        ("round(2.5)", 2, int),
        ("factorial(20)", 2432902008176640000, int),
    ],
)
def test_ints_stay_ints_where_exact(expression: str, expected: float, kind: type) -> None:
    result = value(expression)
    assert result == expected
    assert type(result) is kind


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("sqrt(16)", 4.0),
        ("log(e)", 1.0),
        ("log(8, 2)", 3.0),
        ("log10(1000)", 3.0),
        ("log2(1024)", 10.0),
        ("exp(0)", 1.0),
        ("sin(0) + cos(0)", 1.0),
        ("tan(pi / 4)", 1.0),
        ("asin(1) * 2", math.pi),
        ("acos(1)", 0.0),
        ("atan(1) * 4", math.pi),
        ("hypot(3, 4)", 5.0),
        ("min(3, 1.5, 2)", 1.5),
        ("max(3, 1.5, 2)", 3),
        ("round(2.567, 2)", 2.57),
        ("tau / 2", math.pi),
        ("factorial(5.0)", 120),
    ],
)
def test_functions_and_constants(expression: str, expected: float) -> None:
    assert value(expression) == pytest.approx(expected)


def test_variables() -> None:
    assert value("price * qty - discount", {"price": 2.5, "qty": 4, "discount": 1}) == 9.0
    assert value("n * 2", {"n": 21}) == 42
    assert type(value("n * 2", {"n": 21})) is int
    assert value("e * 2", {"e": 5}) == 10  # a variable overrides a constant
    assert value("sqrt(x)", {"x": 9}) == 3.0


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"sqrt": 1}, "shadows the function"),
        ({"not an identifier": 1}, "not a valid identifier"),
        ({"lambda": 1}, "not a valid identifier"),
        ({"x": True}, "must be a number"),
        ({"x": "1"}, "must be a number"),
        ({"x": None}, "must be a number"),
        ({"x": float("nan")}, "must be finite"),
        ({"x": float("inf")}, "must be finite"),
        ({"x": 10**5000}, "digits"),
    ],
)
def test_bad_variables(variables: dict, message: str) -> None:
    with pytest.raises(ToolInputError, match=message):
        evaluate("1", variables)


ABUSE = [
    ("__import__('os').system('id')", "not allowed"),
    ("__import__('os')", "call of __import__\\(\\) not allowed"),
    ("().__class__.__bases__[0].__subclasses__()", "attribute access"),
    ("(1).__class__", "attribute access"),
    ("open('/etc/passwd')", "call of open\\(\\) not allowed"),
    ("eval('1')", "call of eval\\(\\) not allowed"),
    ("exec('x=1')", "call of exec\\(\\) not allowed"),
    ("compile('1', '', 'eval')", "call of compile\\(\\) not allowed"),
    ("globals()", "call of globals\\(\\) not allowed"),
    ("math.sqrt(4)", "attribute access"),
    ("lambda: 1", "lambda not allowed"),
    ("(lambda: 1)()", "only plain calls"),
    ("[x for x in ()]", "list comprehensions not allowed"),
    ("(x for x in ())", "generator expressions not allowed"),
    ("{1: 2}", "dicts not allowed"),
    ("[1, 2][0]", "not allowed"),
    ("'a' * 10", "string literals not allowed"),
    ("b'a'", "bytes literals not allowed"),
    ("f'{1}'", "f-strings not allowed"),
    ("1j", "complex numbers not allowed"),
    ("True + 1", "booleans not allowed"),
    ("None", "not allowed"),
    ("1 < 2", "comparisons not allowed"),
    ("1 and 2", "'and' / 'or' not allowed"),
    ("not 1", "'not' not allowed"),
    ("~1", "'~' not allowed"),
    ("1 if 1 else 2", "conditional expressions not allowed"),
    ("(y := 1)", "assignment expressions"),
    ("1 << 100", "shift"),
    ("9**9**9", "exponent .* over the limit"),
    ("10**100000", "exponent .* over the limit"),
    ("10**1000000", "exponent .* over the limit"),
    ("2**10000 * 2**10000 * 2**10000", "digits"),
    ("(10**2000)**3", "digits"),
    ("factorial(100000)", "over the limit"),
    ("factorial(1001)", "over the limit"),
    ("round(5, -10**9)", "number of digits"),
    ("(" * 60 + "1" + ")" * 60, "nested more than"),
    ("-" * 300 + "1", "nested more than|more than .* nodes"),
    ("+".join(["1"] * 400), "more than .* nodes|nested more than"),
    ("1" * 1001, "characters long"),
    ("1 +" + " 1 +" * 300 + " 1", "characters long"),
    ("x", "name 'x' is not defined"),
    ("sqrt", "is a function"),
    ("max(1, key=2)", "keyword arguments not allowed"),
    ("max(*(1, 2))", "starred arguments not allowed"),
    ("sqrt(1, 2)", "takes 1 argument"),
    ("log()", "takes 1 to 2 argument"),
    ("2^3", "use \\*\\* for powers"),
    ("2 ^^ 3", "use \\*\\* for powers"),
    ("1 +", "invalid expression"),
    ("1; 2", "invalid expression"),
    ("", "empty"),
    ("   ", "empty"),
    ("1e999", "out of range"),
]


@pytest.mark.parametrize(("expression", "message"), ABUSE, ids=[e[:40] for e, _ in ABUSE])
def test_refused_input(expression: str, message: str) -> None:
    with pytest.raises(ToolInputError, match=message):
        evaluate(expression)


def test_input_errors_are_bad_input() -> None:
    with pytest.raises(ToolInputError) as info:
        evaluate("__import__('os')")
    assert info.value.error_type == "bad_input"


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("1 / 0", "division by zero"),
        ("1 // 0", "division by zero"),
        ("1 % 0", "division by zero"),
        ("1.5 / 0.0", "division by zero"),
        ("0 ** -1", "division by zero"),
        ("log(0)", "math domain error"),
        ("sqrt(-1)", "math domain error"),
        ("asin(2)", "math domain error"),
        ("log(2, 1)", "division by zero"),
        ("factorial(-1)", "negative"),
        ("factorial(2.5)", "integers"),
        ("exp(1000)", "overflow"),
        ("1e308 * 10", "infinity"),
        ("2.0 ** 10000", "overflow"),
        ("(-8) ** 0.5", "complex"),
        ("10**3999 / 3", "overflow"),
        ("sqrt(10**3000)", "overflow"),
    ],
)
def test_arithmetic_failures(expression: str, message: str) -> None:
    with pytest.raises(ToolFailure, match=message) as info:
        evaluate(expression)
    assert info.value.error_type == "tool_error"


def test_limits_are_module_constants() -> None:
    assert math_calculator.MAX_EXPRESSION_CHARS == 1000
    assert math_calculator.MAX_EXPONENT >= 1000
    # The largest ints allowed still convert to text (CPython's default limit is 4300 digits).
    assert math_calculator.MAX_INT_DIGITS <= 4300
    biggest = value("10 ** 3999")
    assert len(str(biggest)) == 4000
    assert value("2 ** 10000 // 2 ** 9999") == 2


def test_expression_at_the_length_limit_is_accepted() -> None:
    expression = "1" + " " * (math_calculator.MAX_EXPRESSION_CHARS - 1)
    assert value(expression) == 1


def test_non_string_expression() -> None:
    with pytest.raises(ToolInputError, match="must be a string"):
        evaluate(42)  # type: ignore[arg-type]
