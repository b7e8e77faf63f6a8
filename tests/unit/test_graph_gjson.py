"""The GJSON subset used by InferenceGraph conditions (shipyard.graph.gjson)."""

from __future__ import annotations

import pytest

from shipyard.graph import gjson
from shipyard.graph.gjson import GjsonError

# GJSON's README document.
FRIENDS = {
    "name": {"first": "Tom", "last": "Anderson"},
    "age": 37,
    "children": ["Sara", "Alex", "Jack"],
    "fav.movie": "Deer Hunter",
    "friends": [
        {"first": "Dale", "last": "Murphy", "age": 44, "nets": ["ig", "fb", "tw"]},
        {"first": "Roger", "last": "Craig", "age": 68, "nets": ["fb", "tw"]},
        {"first": "Jane", "last": "Murphy", "age": 47, "nets": ["ig", "tw"]},
    ],
}


# -- KServe's documented condition examples ----------------------------------------------------


@pytest.mark.parametrize(
    ("document", "condition", "expected"),
    [
        ({"instances": [{"intval": 5}, {"intval": 12}]}, "instances.#(intval>10)", True),
        ({"instances": [{"intval": 5}, {"intval": 10}]}, "instances.#(intval>10)", False),
        ({"source": "client", "instances": [1]}, "[@this].#(source==client)", True),
        ({"source": "server", "instances": [1]}, "[@this].#(source==client)", False),
        ({"instances": [{"strval": "blue"}, {"strval": "darkred"}]}, "instances.#(strval%*red*)", True),
        ({"instances": [{"strval": "blue"}, {"strval": "green"}]}, "instances.#(strval%*red*)", False),
        ({"predictions": [0.9, 0.1]}, "predictions.0", True),
        ({"predictions": []}, "predictions.0", False),
        ({"outputs": [{"name": "proba"}, {"name": "label"}]}, 'outputs.#(name=="label")', True),
        ({"outputs": [{"name": "proba"}]}, 'outputs.#(name=="label")', False),
    ],
)
def test_kserve_condition_examples(document: object, condition: str, expected: bool) -> None:
    assert gjson.exists(document, condition) is expected


# -- paths ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("name.last", "Anderson"),
        ("age", 37),
        ("children", ["Sara", "Alex", "Jack"]),
        ("children.#", 3),
        ("children.1", "Alex"),
        ("child*.2", "Jack"),
        ("c?ildren.0", "Sara"),
        ("fav\\.movie", "Deer Hunter"),
        ("friends.#.first", ["Dale", "Roger", "Jane"]),
        ("friends.1.last", "Craig"),
        ("friends.#.nets.0", ["ig", "fb", "ig"]),
        ("@this.name.first", "Tom"),
        ("[name.first,age,nothing]", ["Tom", 37]),
        ("[@this].#", 1),
    ],
)
def test_paths(query: str, expected: object) -> None:
    assert gjson.get(FRIENDS, query) == expected
    assert gjson.exists(FRIENDS, query)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ('friends.#(last=="Murphy").first', "Dale"),
        ('friends.#(last="Murphy").first', "Dale"),
        ('friends.#(last=="Murphy")#.first', ["Dale", "Jane"]),
        ("friends.#(age>45)#.last", ["Craig", "Murphy"]),
        ("friends.#(age>=47)#.first", ["Roger", "Jane"]),
        ("friends.#(age<45).first", "Dale"),
        ("friends.#(age<=44)#.first", ["Dale"]),
        ("friends.#(age!=44)#.first", ["Roger", "Jane"]),
        ('friends.#(first%"D*").last', "Murphy"),
        ('friends.#(first!%"D*").last', "Craig"),
        ('friends.#(first%"?ane").last', "Murphy"),
        ('children.#(!%"*a*")', "Alex"),
        ('children.#(%"*a*")#', ["Sara", "Jack"]),
        ('friends.#(nets.#(=="fb"))#.first', ["Dale", "Roger"]),
        ("friends.#(nets)#.first", ["Dale", "Roger", "Jane"]),
        ("friends.#( age > 60 ).first", "Roger"),
    ],
)
def test_queries(query: str, expected: object) -> None:
    assert gjson.get(FRIENDS, query) == expected


def test_missing_values_do_not_exist() -> None:
    assert gjson.get(FRIENDS, "name.middle") is None
    assert gjson.get(FRIENDS, "name.middle", default="-") == "-"
    assert not gjson.exists(FRIENDS, "name.middle")
    assert not gjson.exists(FRIENDS, "children.9")
    assert not gjson.exists(FRIENDS, "age.#")  # '#' on a number
    assert not gjson.exists(FRIENDS, "name.#(x==1)")  # a query on an object
    assert not gjson.exists(FRIENDS, 'friends.#(last=="Smith")')


def test_exists_semantics() -> None:
    # A JSON null exists (GJSON: Exists() is false only for a missing value).
    assert gjson.exists({"a": None}, "a")
    # A real empty array exists; an all-matches query that matched nothing does not (Shipyard).
    assert gjson.exists({"a": []}, "a")
    assert gjson.get(FRIENDS, "friends.#(age>100)#") == []
    assert not gjson.exists(FRIENDS, "friends.#(age>100)#")
    assert not gjson.exists({"a": []}, "a.#.b")
    # A multipath builds an array, which exists even when empty.
    assert gjson.exists(FRIENDS, "[nothing]")


def test_comparisons_follow_gjson_types() -> None:
    rows = {"rows": [{"v": True}, {"v": False}, {"v": "10"}, {"v": 10}, {"v": None}, {"v": [1]}]}
    assert gjson.get(rows, "rows.#(v==true)#") == [{"v": True}]
    assert gjson.get(rows, "rows.#(v==false)#") == [{"v": False}]
    # The element's type decides: a string compares as a string, a number as a number (bools are
    # not numbers); quoting the query's value does not change that (as in GJSON).
    assert gjson.get(rows, 'rows.#(v=="10")#') == [{"v": "10"}, {"v": 10}]
    assert gjson.get(rows, 'rows.#(v=="10.0")#') == [{"v": 10}]
    assert gjson.get(rows, "rows.#(v==10)#") == [{"v": "10"}, {"v": 10}]
    assert gjson.get(rows, "rows.#(v>9)#") == [{"v": 10}]
    # null and arrays match no operator, but exist.
    assert gjson.get(rows, "rows.#(v)#") == rows["rows"]
    assert gjson.get({"xs": [{"v": 5}]}, "xs.#(v==abc)") is None
    assert gjson.exists({"xs": [{"v": 0}]}, "xs.#(v==abc)")  # GJSON: a non-number value counts as 0
    # Strings order lexicographically.
    assert gjson.get({"xs": ["apple", "pear"]}, 'xs.#(>"b")') == "pear"


def test_escaped_wildcards_and_like_escapes() -> None:
    doc = {"a*b": 1, "axb": 2, "names": ["x*y", "xzy"]}
    assert gjson.get(doc, "a\\*b") == 1
    assert gjson.get(doc, "names.#(%\"x\\\\*y\")") == "x*y"


@pytest.mark.parametrize(
    ("query", "position", "fragment"),
    [
        ("", 0, "empty path"),
        ("a.", 2, "empty path component"),
        ("a..b", 2, "empty path component"),
        ("instances.#(intval>10", 21, "not closed"),
        ("#()", 2, "empty query"),
        ("a.#(x==)", 7, "missing value"),
        ("a.#(x 10)", 6, "expected an operator"),
        ('a.#(x=="open)', 7, "unterminated string"),
        ("a.@reverse", 2, "not supported"),
        ("a|b", 1, "pipes"),
        ("{a,b}", 0, "object multipaths"),
        ("[a,b", 4, "multipath"),
        ("a(b", 1, "unexpected"),
        ("a\\", 1, "end of the query"),
    ],
)
def test_parse_errors_carry_the_position(query: str, position: int, fragment: str) -> None:
    with pytest.raises(GjsonError) as caught:
        gjson.parse(query)
    assert caught.value.position == position
    assert fragment in caught.value.message
    assert f"position {position}" in str(caught.value)


def test_parse_is_cached() -> None:
    assert gjson.parse("a.b") is gjson.parse("a.b")
