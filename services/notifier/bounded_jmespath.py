"""JMESPath whose cost is bounded: for the expressions users store (subscription queries and
attachments) that the notifier evaluates on every bundle event, on its event loop.

Two guards, each enough to stop an expression such as ``'ab' | join('', [@,@]) | join('', [@,@]) | ...``
that doubles a string at each step:

1. A cost model (``check_cost``), applied when an expression is accepted and again before a stored
   one is evaluated. Each node of the parsed expression gets an upper bound of the size of the
   values it can produce, ``m·n + c`` for an input of ``n`` bytes (serialised JSON), and from there
   a bound in terms of the event document. The expression is refused (``jmespath_too_costly``) when
   some value it could build may be more than ``max_growth`` times the size of the document plus
   the expression itself (``m > G`` or ``c > G·len(expression)``), or when it nests more than
   ``MAX_DEPTH`` levels (the interpreter recurses once per level). Paths, filters, projections and
   functions that select or summarise stay within a small factor; whatever repeats its input (a
   multiselect of ``@`` fed to ``join``, ``to_string`` of ``to_string``, a literal repeated per
   element) multiplies its bound, so doubling is refused after a few steps whatever number of steps
   the length limit allows. A ``join`` whose separator depends on the input (count times size: a
   quadratic) is refused outright.

2. A budget (``Budget``, ``evaluate``), enforced during evaluation: each node visited and each
   element that a projection, flatten, slice, function or comparison handles is a step, and each
   character of a string built (``join``, ``to_string``, ``reverse``) counts against a character
   allowance. Evaluation stops (``jmespath_limit_exceeded``) as soon as either is spent, before the
   value is built: this bounds the CPU time an evaluation holds the event loop for and the memory
   it allocates, deterministically (the same expression on the same document always costs the
   same, so a busy machine never makes it fail), including for what the model does not see
   (shared references that a flatten or a serialisation would expand).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

import jmespath.functions
from jmespath.visitor import Options, TreeInterpreter

from shared.exceptions import InvalidParameter

TOO_COSTLY = "jmespath_too_costly"
LIMIT_EXCEEDED = "jmespath_limit_exceeded"
MAX_DEPTH = 100  # levels of the parsed expression; a chain of pipes nests one level per pipe

_NULL = 4  # bytes of `null`
_SCALAR = 32  # a bound of a number, boolean or type name a function returns


# --- the cost model ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Bound:
    """A value's size is at most ``m·n + c`` bytes for an input of ``n`` bytes."""
    m: int
    c: int

    def of(self, given: Bound) -> Bound:
        """This bound applied to an input bounded by ``given``."""
        return Bound(self.m * given.m, self.m * given.c + self.c)

    def __add__(self, other: Bound) -> Bound:
        return Bound(self.m + other.m, self.c + other.c)

    def times(self, factor: int) -> Bound:
        return Bound(self.m * factor, self.c * factor)

    def plus(self, constant: int) -> Bound:
        return Bound(self.m, self.c + constant)

    def union(self, other: Bound) -> Bound:
        return Bound(max(self.m, other.m), max(self.c, other.c))


IDENTITY = Bound(1, 0)
SCALAR = Bound(0, _SCALAR)
# Functions taking an expression to apply to each element: (position of the array, of the expref).
_EXPREF_ARGUMENTS = {"map": (1, 0), "sort_by": (0, 1), "min_by": (0, 1), "max_by": (0, 1)}


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _projected(items: Bound, each: Bound) -> Bound:
    """The list of ``each`` applied to every element of a list bounded by ``items``: the elements
    (at least 1 byte and a comma each) add up to the list, and each may add ``c`` bytes of its own
    (nulls are dropped from projections)."""
    factor = each.m + _ceil_div(max(0, each.c + 1 - each.m), 2)
    return items.times(factor).plus(2)


def _describe(node: Mapping[str, Any]) -> str:
    kind = node.get("type")
    if kind == "function_expression":
        return f"{node.get('value')}()"
    return {"multi_select_list": "a multiselect list [...]", "multi_select_dict": "a multiselect hash {...}",
            "projection": "a projection", "value_projection": "an object projection (*)",
            "filter_projection": "a filter projection [?...]", "flatten": "a flatten []",
            "literal": "a literal"}.get(kind, str(kind).replace("_", " "))


def _magnitude(number: int) -> str:
    digits = len(str(number))
    return str(number) if digits <= 12 else f"about 10^{digits - 1}"


class _TooCostly(Exception):
    """args: (title)."""


class _CostModel:
    def __init__(self, expression_bytes: int, max_growth: int):
        self.max_growth = max_growth
        self.max_m = max_growth
        self.max_c = max_growth * max(expression_bytes, 1)

    def check(self, node: Mapping[str, Any], given: Bound) -> Bound:
        """The bound of ``node``'s output relative to its input, whose absolute bound (in terms of
        the document) is ``given``; every value it builds is checked against the limit."""
        transfer = self._transfer(node, given)
        self._check_value(node, transfer.of(given))
        return transfer

    def _transfer(self, node: Mapping[str, Any], given: Bound) -> Bound:
        kind = node["type"]
        children = node.get("children", [])
        if kind in ("current", "identity", "field", "index", "slice"):
            return IDENTITY  # the input or a part of it (or null)
        if kind == "literal":
            return Bound(0, len(json.dumps(node["value"], separators=(",", ":"), ensure_ascii=False).encode()))
        if kind in ("subexpression", "pipe", "index_expression"):
            transfer, current = IDENTITY, given
            for child in children:
                step = self.check(child, current)
                transfer, current = step.of(transfer), step.of(current)
            return transfer
        if kind in ("projection", "value_projection", "filter_projection"):
            left = self.check(children[0], given)
            items = left.of(given)  # an element is at most the whole list
            each = self.check(children[1], items)
            if kind == "filter_projection":
                self.check(children[2], items)
            return _projected(left, each)
        if kind in ("flatten", "key_val_pair"):
            return self.check(children[0], given)
        if kind == "multi_select_list":
            parts = [self.check(child, given) for child in children]
            return sum(parts, Bound(0, 0)).plus(len(parts) * (_NULL + 1) + 1)
        if kind == "multi_select_dict":
            total = Bound(0, 1)
            for pair in children:
                key = len(json.dumps(pair["value"], ensure_ascii=False).encode())
                total = total + self.check(pair, given).plus(key + 1 + _NULL + 1)
            return total
        if kind in ("or_expression", "and_expression"):
            first, second = (self.check(child, given) for child in children)
            return first.union(second)
        if kind in ("not_expression", "comparator"):
            for child in children:
                self.check(child, given)
            return SCALAR
        if kind == "expref":  # outside a function: a value that is no JSON, used as such it fails
            self.check(children[0], given)
            return Bound(0, _NULL)
        if kind == "function_expression":
            return self._function(node, given)
        raise _TooCostly(f"{_describe(node)} is not supported")

    def _function(self, node: Mapping[str, Any], given: Bound) -> Bound:
        name, children = node["value"], node["children"]
        positions = _EXPREF_ARGUMENTS.get(name)
        if positions and children[positions[1]]["type"] == "expref":
            # The expression applies to each element of the array.
            array_at, expref_at = positions
            items = self.check(children[array_at], given)
            each = self.check(children[expref_at]["children"][0], items.of(given))
            mapped = _projected(items, each.plus(_NULL))  # map keeps nulls
            self._check_value(node, mapped.of(given))  # sort_by and the others build the list of keys
            return mapped if name == "map" else items
        args = [self.check(child, given) for child in children]  # an expref here is checked, and fails when run
        if positions:
            return Bound(0, _NULL)
        if name == "join":
            # The items' characters plus a separator between two. Each item takes its quotes and a
            # comma more in the array than in the result: at most a third as many items as bytes,
            # and a separator of up to 3 characters makes the result no larger than the array.
            separator, items = args
            if separator.m and items.m:
                raise _TooCostly("join() with a separator that depends on the input (its size times the number "
                                 "of items) is not allowed; use a literal separator")
            if items.m:
                extra = max(separator.c - 2 - 3, 0)  # the separator's characters beyond 3 (c counts its quotes)
                return items.times(1 + _ceil_div(extra, 3)).plus(1)
            count = _ceil_div(items.c, 3)
            return Bound(count * separator.m, items.c + count * separator.c + 1)
        if name == "to_string":
            # ASCII-escaped JSON of the argument (up to 3.5 times its UTF-8 size), escaped again as a string
            return args[0].times(4).plus(2)
        if name == "to_array":
            return args[0].plus(2)
        if name in ("merge", "not_null"):
            return sum(args, Bound(0, 0)).plus(2)
        if name in ("keys", "values", "reverse", "sort", "max", "min"):
            return args[0]
        if name in ("abs", "ceil", "floor", "to_number", "avg", "sum"):
            return args[0].plus(_SCALAR)
        if name in ("length", "type", "contains", "starts_with", "ends_with"):
            return SCALAR
        raise _TooCostly(f"{name}() is not known to the cost model")

    def _check_value(self, node: Mapping[str, Any], built: Bound) -> None:
        if built.m > self.max_m:
            raise _TooCostly(f"{_describe(node)} can build a value of up to {_magnitude(built.m)} times the size of "
                             f"the event document; at most {self.max_growth} times is allowed")
        if built.c > self.max_c:
            raise _TooCostly(f"{_describe(node)} can build a value of up to {_magnitude(built.c)} bytes more than the "
                             f"event document; at most {self.max_growth} times the length of the expression "
                             f"({self.max_c} bytes) is allowed")


def _depth(node: Mapping[str, Any]) -> int:
    deepest, stack = 0, [(node, 1)]
    while stack:  # iterative: this is what decides whether recursion over the tree is safe
        current, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in current.get("children", ()) if isinstance(child, Mapping))
    return deepest


def check_cost(parsed: Mapping[str, Any], expression: str, max_growth: int, what: str) -> None:
    """Raise InvalidParameter(``jmespath_too_costly``) unless the parsed ``expression`` nests at
    most ``MAX_DEPTH`` levels and every value it can build is at most ``max_growth`` times the
    size of the document plus the expression (see the module docstring)."""
    depth = _depth(parsed)
    if depth > MAX_DEPTH:
        raise InvalidParameter(f"{what} is too costly: it nests {depth} levels deep, at most {MAX_DEPTH} are allowed",
                               TOO_COSTLY)
    try:
        _CostModel(len(expression.encode("utf-8")), max_growth).check(parsed, IDENTITY)
    except _TooCostly as refused:
        raise InvalidParameter(f"{what} is too costly: {refused.args[0]}", TOO_COSTLY) from None
    except (LookupError, ValueError, TypeError):  # a shape the model does not know (wrong arity, say)
        raise InvalidParameter(f"{what} is too costly: the cost model cannot judge it", TOO_COSTLY) from None


# --- the budget of one evaluation ----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class JMESPathLimits:
    """``max_growth`` for the cost model; ``max_steps`` and ``max_chars`` for each budget."""
    max_growth: int
    max_steps: int
    max_chars: int

    def budget(self) -> Budget:
        return Budget(self)


class Budget:
    """What evaluations may spend together (the notifier gives one to each subscription for each
    event: its query and its attachments). ``what`` names the expression being evaluated, for
    messages."""

    def __init__(self, limits: JMESPathLimits):
        self.limits = limits
        self.steps = 0
        self.chars = 0
        self.what = "the expression"

    def spend(self, steps: int) -> None:
        self.steps += steps
        if self.steps > self.limits.max_steps:
            raise InvalidParameter(f"evaluating {self.what} took more than {self.limits.max_steps} steps (nodes "
                                   "visited and elements handled)", LIMIT_EXCEEDED)

    def build(self, chars: int) -> None:
        """Account for a string of ``chars`` characters about to be built."""
        self.chars += chars
        if self.chars > self.limits.max_chars:
            raise InvalidParameter(f"evaluating {self.what} would build more than {self.limits.max_chars} characters "
                                   "of strings", LIMIT_EXCEEDED)

    def walk(self, value: Any) -> None:
        """A step for each JSON value inside ``value`` (shared ones counted each time they occur),
        stopping as soon as the budget is spent."""
        stack = [value]
        while stack:
            item = stack.pop()
            self.spend(1)
            if isinstance(item, dict):
                stack.extend(item.values())
            elif isinstance(item, list):
                stack.extend(item)

    def serialised_length(self, value: Any) -> int:
        """The length of ``value`` as jmespath's to_string writes it, a step per JSON value; past
        the characters left, the walk stops and a length over them is returned."""
        left = self.limits.max_chars - self.chars
        return json_size(value, left, ensure_ascii=True, on_item=self.spend)


def json_size(value: Any, limit: int, *, ensure_ascii: bool = False, on_item=None) -> int:
    """The size of ``value`` as compact JSON (UTF-8 bytes; ASCII characters with ``ensure_ascii``),
    or ``limit + 1`` as soon as it is known to be larger, so that measuring costs at most about
    ``limit`` whatever the value (a value of shared references can be far larger written out than
    in memory). ``on_item(1)`` is called for each JSON value met."""
    size, stack = 0, [value]
    while stack:
        item = stack.pop()
        if on_item is not None:
            on_item(1)
        if isinstance(item, dict):
            size += 1 + max(len(item), 1)  # braces and the commas between members
            for key, member in item.items():
                size += _scalar_size(str(key), ensure_ascii) + 1
                stack.append(member)
        elif isinstance(item, list):
            size += 1 + max(len(item), 1)
            stack.extend(item)
        else:
            size += _scalar_size(item, ensure_ascii)
        if size > limit:
            return limit + 1
    return size


def _scalar_size(item: Any, ensure_ascii: bool) -> int:
    text = json.dumps(item, ensure_ascii=ensure_ascii, default=str)
    return len(text) if ensure_ascii else len(text.encode("utf-8"))


_BASE = jmespath.functions.Functions
# Functions that go through their array or object arguments (type checks of array elements
# included); the others look at their arguments' type or length only.
_ITERATING = frozenset({"avg", "contains", "join", "keys", "max", "max_by", "merge", "min", "min_by", "reverse",
                        "sort", "sort_by", "sum", "values"})


def _same_signature(name: str):
    return jmespath.functions.signature(*getattr(_BASE, name).signature)


class _BudgetedFunctions(_BASE):
    """The built-in functions, charging the budget before they handle or build anything. Each
    override keeps the base class's signature (the registry only takes decorated methods)."""

    def __init__(self, budget: Budget):
        self.budget = budget

    def call_function(self, function_name, resolved_args):
        if function_name in _ITERATING:
            for argument in resolved_args:
                if isinstance(argument, (list, dict)):
                    self.budget.spend(len(argument))
        return super().call_function(function_name, resolved_args)

    @_same_signature("_func_join")
    def _func_join(self, separator, array):
        self.budget.build(sum(len(item) for item in array) + len(separator) * max(len(array) - 1, 0))
        return super()._func_join(separator, array)

    @_same_signature("_func_to_string")
    def _func_to_string(self, arg):
        if not isinstance(arg, str):
            self.budget.build(self.budget.serialised_length(arg))
        return super()._func_to_string(arg)

    @_same_signature("_func_reverse")
    def _func_reverse(self, arg):
        if isinstance(arg, str):
            self.budget.build(len(arg))
        return super()._func_reverse(arg)

    @_same_signature("_func_contains")
    def _func_contains(self, subject, search):
        if isinstance(subject, list) and isinstance(search, (list, dict)):
            self.budget.walk(subject)  # each comparison may go as deep as the element
        return super()._func_contains(subject, search)


def _ordered(left: Any, right: Any) -> bool:
    """Whether ``<`` and the like compare these two (numbers, or strings as jmespath.py allows);
    the library compares a number with a string too, and Python raises a TypeError."""
    def kind(value):
        if isinstance(value, bool):
            return None
        return "number" if isinstance(value, (int, float)) else "string" if isinstance(value, str) else None
    return kind(left) is not None and kind(left) == kind(right)


class _BudgetedInterpreter(TreeInterpreter):
    def __init__(self, budget: Budget):
        super().__init__(Options(custom_functions=_BudgetedFunctions(budget)))
        self.budget = budget

    def visit(self, node, *args, **kwargs):
        self.budget.spend(1)
        return super().visit(node, *args, **kwargs)

    def visit_flatten(self, node, value):
        base = self.visit(node["children"][0], value)
        if not isinstance(base, list):
            return None
        # Counted before the list is made: flattening [x, x, ...] writes x out again each time.
        self.budget.spend(sum(len(element) if isinstance(element, list) else 1 for element in base))
        merged = []
        for element in base:
            if isinstance(element, list):
                merged.extend(element)
            else:
                merged.append(element)
        return merged

    def visit_slice(self, node, value):
        if isinstance(value, list):
            self.budget.spend(len(value))
        return super().visit_slice(node, value)

    def visit_comparator(self, node, value):
        left = self.visit(node["children"][0], value)
        right = self.visit(node["children"][1], value)
        operator = node["value"]
        if operator in ("eq", "ne"):
            if isinstance(left, (list, dict)) and type(left) is type(right):
                # == on containers compares them all the way down.
                self.budget.walk(left)
                self.budget.walk(right)
            return self.COMPARATOR_FUNC[operator](left, right)
        # As the library, but for a number against a string: ordering anything else is null.
        if not _ordered(left, right):
            return None
        return self.COMPARATOR_FUNC[operator](left, right)


def evaluate(compiled, document: Any, budget: Budget) -> Any:
    """``compiled.search(document)`` within ``budget``: InvalidParameter(``jmespath_limit_exceeded``)
    when it is spent; jmespath's own errors (a type error in a function call) as they are."""
    try:
        return _BudgetedInterpreter(budget).visit(compiled.parsed, document)
    except RecursionError:  # cannot happen within MAX_DEPTH; here for expressions stored before it
        raise InvalidParameter(f"{budget.what} nests too deeply to be evaluated", LIMIT_EXCEEDED) from None
