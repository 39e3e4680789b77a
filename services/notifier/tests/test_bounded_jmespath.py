"""JMESPath with bounded cost (``services.notifier.bounded_jmespath``): the cost model that refuses
expressions whose values can grow past a multiple of the document, and the budget that stops any evaluation,
the model's blind spots included, before it builds what it cannot afford."""
import json
import time

import jmespath
import pytest

from shared.exceptions import InvalidParameter

from services.notifier.bounded_jmespath import (LIMIT_EXCEEDED, MAX_DEPTH, TOO_COSTLY, JMESPathLimits, check_cost,
                                                evaluate, json_size)

GROWTH = 256
LIMITS = JMESPathLimits(max_growth=GROWTH, max_steps=100_000, max_chars=4 * 1024 * 1024)

DOCUMENT = {
    "event_type": "CREATE",
    "bundle_info": {"uuid": "u", "version": "v"},
    "files": {
        "project_json": [{"project_core": {"title": "Liver atlas", "tags": ["a", "b"]}, "n": 3}],
        "cell_suspension_json": [{"organ": "heart", "count": 0, "donors": ["d1", "d2"]},
                                 {"organ": "liver", "count": 7, "donors": []}],
    },
    "numbers": [3, 1, 2.5], "words": ["pear", "apple"], "nested": [[1, 2], [3, [4]], 5],
}


def doubling(steps, start="'ab'"):
    """A string twice as long at each step: 2**steps times its start."""
    return start + " | join('', [@,@])" * steps


def cost(expression, growth=GROWTH):
    check_cost(jmespath.compile(expression).parsed, expression, growth, "q")


def too_costly(expression):
    with pytest.raises(InvalidParameter) as raised:
        cost(expression)
    assert raised.value.error_code == TOO_COSTLY
    return raised.value.title


# --- the cost model ---------------------------------------------------------------------------------

@pytest.mark.parametrize("expression", [
    "files.cell_suspension_json[0].organ == 'heart'",
    "event_type == 'CREATE' && contains(files.cell_suspension_json[].organ, 'liver')",
    "files.*[].project_core.title",
    "files.cell_suspension_json[?count > `1`].{organ: organ, donors: length(donors), kind: 'suspension'}",
    "files.project_json[*].project_core.tags[*].[@, @]",
    "sort_by(files.cell_suspension_json, &organ)[-1].organ",
    "map(&length(donors), files.cell_suspension_json)",
    "join(', ', words)",
    "merge(`{}`, bundle_info)",
    "contains(to_string(@), 'liver')",
    "to_string(to_string(to_string(@)))",  # 64 times: wasteful, not explosive
    doubling(5),  # 64 characters
    " | ".join(["@"] * (MAX_DEPTH - 1)),
    "length(&a)", "map(a, b)",  # type errors when evaluated, judged all the same
])
def test_expressions_that_select_or_summarise_pass_the_cost_model(expression):
    assert cost(expression) is None  # accepted: a refusal raises InvalidParameter
    # What the model accepts stays within its bound when evaluated (when it evaluates at all).
    bound = GROWTH * (json_size(DOCUMENT, 10**9) + len(expression))
    try:
        value, _ = run(expression)
    except jmespath.exceptions.JMESPathTypeError:
        return
    assert json_size(value, bound) <= bound


@pytest.mark.parametrize("expression, culprit", [
    (doubling(40), "a multiselect list [...]"),  # 2**40 times 'ab', in 760 characters
    (doubling(12, start="files"), "a multiselect list [...]"),
    (" | ".join(["[@,@]"] * 9), "a multiselect list [...]"),  # 512 times the document
    ("to_string(to_string(to_string(to_string(to_string(@)))))", "to_string()"),
    ("files.cell_suspension_json[*].['" + "x" * 600 + "']", "a projection"),  # a literal per element
    ("join(event_type, words)", "join() with a separator that depends on the input"),
    ("map(&[@,@,@,@,@,@,@,@], @) | map(&[@,@,@,@,@,@,@,@], @) | map(&[@,@,@,@,@,@,@,@], @)", "map()"),
])
def test_expressions_that_can_grow_values_are_refused_naming_the_culprit(expression, culprit):
    title = too_costly(expression)
    assert title.startswith("q is too costly: ") and culprit in title
    assert "times" in title  # says how far from the limit


def test_the_limit_scales_with_the_growth_allowed():
    cost(doubling(10))
    with pytest.raises(InvalidParameter):
        cost(doubling(10), growth=16)


def test_nesting_deeper_than_the_interpreter_may_recurse_is_refused():
    # Pipes nest one level each: 2000 of them fit in 4,096 characters and would exhaust the stack.
    title = too_costly(" | ".join(["a"] * 2000))
    assert f"at most {MAX_DEPTH}" in title
    too_costly("!" * (MAX_DEPTH + 1) + "a")


# --- the budget ---------------------------------------------------------------------------------------

def run(expression, document=DOCUMENT, limits=LIMITS):
    budget = limits.budget()
    return evaluate(jmespath.compile(expression), document, budget), budget


def limit_exceeded(expression, limits=LIMITS):
    """Evaluate without the cost model (as if it had a blind spot): the budget alone stops it, fast."""
    started = time.monotonic()
    with pytest.raises(InvalidParameter) as raised:
        run(expression, limits=limits)
    assert raised.value.error_code == LIMIT_EXCEEDED
    assert time.monotonic() - started < 5
    return raised.value.title


@pytest.mark.parametrize("expression", [
    "files.cell_suspension_json[0].organ == 'heart'",
    "files.cell_suspension_json[?count > `1`].organ",
    "files.*[].organ",
    "files.cell_suspension_json[*].{o: organ, n: length(donors)}",
    "nested[]", "nested[][]", "numbers[::-1]", "numbers[1:]", "words[0:1]",
    "numbers[?@ > `2`]", "numbers[0] < numbers[1]", "words[0] < words[1]", "words[0] < `true`",
    "`[1, 2]` == `[1, 2]`", "files == files", "`1` == `true`", "`0` != `false`", "!`0`",
    "join('-', words)", "to_string(bundle_info)", "to_string('x')", "reverse(words)", "reverse('abc')",
    "sort(words)", "sort_by(files.cell_suspension_json, &count)[0].organ", "max_by(files.cell_suspension_json, &count)",
    "min(numbers)", "max(words)", "sum(numbers)", "avg(numbers)", "length(files)", "keys(bundle_info)",
    "values(bundle_info)", "merge(bundle_info, `{\"x\": 1}`)", "contains(files.cell_suspension_json, "
    "files.cell_suspension_json[0])", "contains(words, 'pear')", "map(&organ, files.cell_suspension_json)",
    "not_null(nothing, event_type)", "to_array(event_type)", "to_number('2.5')", "type(@)", "abs(`-2`)",
    "starts_with(event_type, 'CR')", "event_type || 'x'", "nothing && 'x'",
])
def test_evaluation_within_the_budget_gives_what_jmespath_gives(expression):
    result, budget = run(expression)
    assert result == jmespath.search(expression, DOCUMENT)
    assert 0 < budget.steps < 1000
    assert run(expression)[1].steps == budget.steps  # deterministic: the same cost every time


def test_jmespath_errors_are_left_as_they_are():
    with pytest.raises(jmespath.exceptions.JMESPathTypeError):
        run("abs(event_type)")


def test_ordering_a_string_against_a_number_is_null_not_a_python_error():
    with pytest.raises(TypeError):
        jmespath.search("words[0] < numbers[0]", DOCUMENT)  # the library's own interpreter
    assert run("words[0] < numbers[0]")[0] is None


def test_a_string_doubled_at_each_step_stops_before_it_is_built():
    title = limit_exceeded(doubling(40), JMESPathLimits(GROWTH, 100_000, 1_000_000))
    assert "characters" in title and "1000000" in title


def test_values_of_shared_references_stop_before_they_are_written_out():
    shared = " | ".join(["[@,@]"] * 40)  # 2**40 leaves in 40 lists of memory
    assert "steps" in limit_exceeded(shared + " | to_string(@)")
    assert "steps" in limit_exceeded(shared + " | @" + "[]" * 40)  # each flatten doubles a real list
    assert "steps" in limit_exceeded(shared + " | @" + "[*]" * 40)
    assert "steps" in limit_exceeded(f"({shared}) == (join('', ['a', 'b']) | {shared})")  # equal all the way down
    assert "steps" in limit_exceeded(f"contains([{shared}], {shared})")


def test_the_budget_is_shared_by_the_evaluations_it_is_given_to():
    budget = JMESPathLimits(GROWTH, 50, 1000).budget()
    compiled = jmespath.compile("files.cell_suspension_json[*].organ")
    evaluate(compiled, DOCUMENT, budget)
    spent = budget.steps
    budget.what = "attachment 'x'"
    with pytest.raises(InvalidParameter) as raised:
        for _ in range(50 // spent + 1):
            evaluate(compiled, DOCUMENT, budget)
    assert raised.value.title.startswith("evaluating attachment 'x' took more than 50 steps")


# --- sizes ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [DOCUMENT, [], {}, "", "é\"\\\u0001\U0001f600", 1.5, -7, True, None,
                                   {"k": [None, False, {"é": "x"}]}])
def test_json_size_is_the_size_of_the_compact_json(value):
    encoded = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    assert json_size(value, 10**9) == len(encoded)
    ascii_text = json.dumps(value, separators=(",", ":"))
    assert json_size(value, 10**9, ensure_ascii=True) == len(ascii_text)
    assert json_size(value, len(encoded) - 1) == len(encoded) if encoded else True


def test_json_size_stops_past_its_limit():
    value = "x"
    for _ in range(60):
        value = [value, value]  # 2**60 strings written out
    started = time.monotonic()
    assert json_size(value, 10_000) == 10_001
    assert time.monotonic() - started < 1
