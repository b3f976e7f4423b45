"""vmhealth.jsontext.loads against json.loads: the same value or the same error."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vmhealth
from vmhealth import jsontext

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=4),
    max_leaves=12)
whitespace = st.text(st.sampled_from(" \t\r\n\x0b\x0c\u00a0"), max_size=3)
# Pieces of JSON and of near-JSON, so that random joins are often almost valid.
fragments = st.sampled_from(['{', '}', '[', ']', ',', ':', '"', '"a"', '1', '-', '0', '.5',
                             'e3', 'true', 'nul', 'null', 'NaN', '-Infinity', '\\', '\\u00e9',
                             '\\ud800', '\x01', '\ufeff', ' ', '\n', '01', '1e', '{}', '[]'])


def outcome(decode, text: str):
    try:
        value = decode(text)
    except json.JSONDecodeError as exc:
        return ("error", str(exc), exc.pos)
    # NaN is not equal to itself; compare what json.dumps makes of the value.
    return ("value", json.dumps(value, sort_keys=True), type(value).__name__)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(json_values, whitespace, whitespace, st.booleans())
def test_valid_documents_decode_alike(value, before, after, indent):
    text = before + json.dumps(value, indent=2 if indent else None) + after
    assert outcome(jsontext.loads, text) == outcome(json.loads, text)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(fragments, max_size=10).map("".join) | st.text(max_size=20))
def test_any_text_is_decoded_or_refused_alike(text):
    assert outcome(jsontext.loads, text) == outcome(json.loads, text)


@pytest.mark.parametrize("text", ["", "   ", '{"a": 1} x', '\ufeff{}', "[1,]", '{"a" 1}',
                                  "NaN", '"\x01"', " \n{}\t ", "[1e400, -0.0]", '{"a":1,"a":2}'])
def test_edge_cases_decode_alike(text):
    assert outcome(jsontext.loads, text) == outcome(json.loads, text)


def test_constants_decode_as_json_loads_does():
    # json.loads accepts them (the spec rules then refuse a number where an integer
    # belongs); a stricter decoder here would change the message `vmhealth apply` gives.
    assert math.isnan(jsontext.loads("NaN"))
    assert jsontext.loads("[Infinity, -Infinity]") == [math.inf, -math.inf]


def test_bytes_are_left_to_json_loads():
    assert jsontext.loads(b'{"a": [1]}') == {"a": [1]}


def test_decoding_does_not_import_json_or_re():
    package_parent = str(Path(vmhealth.__file__).parents[1])
    probe = (f"import sys; sys.path.insert(0, {package_parent!r}); "
             "from vmhealth.jsontext import loads; loads('{\"a\": [1, 2.5]}'); "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('json', 're')))")
    done = subprocess.run([sys.executable, "-I", "-S", "-c", probe], capture_output=True,
                          text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


# ---------------------------------------------------------------------------
# Bounds: a clear refusal instead of a RecursionError or a huge decode
# ---------------------------------------------------------------------------

def nested(levels: int, open_: str = "[", close: str = "]") -> str:
    return open_ * levels + close * levels


@pytest.mark.parametrize("text", [
    nested(33),  # one past the bound: found by the walk over the value
    nested(900),  # below the recursion limit, far past the bound
    nested(50_000),  # the C scanner's RecursionError, turned into the same answer
    '{"a":' * 40 + "1" + "}" * 40,
    "[" + ",".join(["[]"] * 40) + "," + nested(33) + "]",  # deep only at the end
])
def test_nesting_past_the_bound_is_refused_with_its_depth(text):
    with pytest.raises(jsontext.JSONLimitError, match="^nested deeper than 32 levels$"):
        jsontext.loads(text, max_depth=32)


@pytest.mark.parametrize("text", [
    nested(32),
    '{"a":' * 31 + "[]" + "}" * 31,
    # More than 32 brackets, none deeper than 2: the walk runs and finds nothing.
    "[" + ",".join(["[1]"] * 100) + "]",
    '"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["',  # brackets in a string
])
def test_nesting_within_the_bound_decodes_as_json_loads(text):
    assert jsontext.loads(text, max_depth=32) == json.loads(text)


def test_depth_counts_every_level():
    assert jsontext.loads("[[]]", max_depth=2) == [[]]
    with pytest.raises(jsontext.JSONLimitError):
        jsontext.loads("[[[]]]", max_depth=2)
    with pytest.raises(jsontext.JSONLimitError):
        jsontext.loads('{"a":{"b":{}}}', max_depth=2)


def test_length_past_the_bound_is_refused_before_decoding():
    # Not even valid JSON: the length answers first.
    with pytest.raises(jsontext.JSONLimitError,
                       match="^11 characters long, more than the 10 allowed$"):
        jsontext.loads("[" * 11, max_chars=10)
    assert jsontext.loads('"' + "x" * 8 + '"', max_chars=10) == "x" * 8


def test_without_bounds_deep_nesting_behaves_as_json_loads():
    with pytest.raises(RecursionError):
        json.loads(nested(50_000))
    with pytest.raises(RecursionError):
        jsontext.loads(nested(50_000))
    assert jsontext.loads(nested(200)) == json.loads(nested(200))
