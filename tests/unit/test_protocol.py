"""Unit tests for v1 / OIP v2 request decoding and response encoding."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from pilothouse.serving.protocol import (
    BadRequest,
    decode_v1,
    decode_v2,
    encode_v1,
    encode_v2_output,
    feature_names,
)

SIG: dict[str, Any] = {"inputs": [{"name": n, "datatype": "FP64"} for n in ["a", "b", "c"]]}

Decoder = Callable[[Any, dict[str, Any] | None], Any]


def tensor(name: str, shape: Any, data: Any, datatype: str = "FP64") -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def test_feature_names_follow_the_signature() -> None:
    assert feature_names(SIG) == ["a", "b", "c"]
    assert feature_names(None) == []
    assert feature_names({}) == []


# --- v1 -------------------------------------------------------------------------------


def test_v1_lists_of_lists() -> None:
    out = decode_v1({"instances": [[1, 2, 3], [4.5, 5, 6]]}, SIG)
    assert out.dtype == np.float64
    assert out.shape == (2, 3)
    assert out.tolist() == [[1.0, 2.0, 3.0], [4.5, 5.0, 6.0]]


def test_v1_objects_are_ordered_by_signature() -> None:
    body = {"instances": [{"c": 3, "a": 1, "b": 2}, {"b": 20, "c": 30, "a": 10}]}
    assert decode_v1(body, SIG).tolist() == [[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]]


def test_v1_without_signature_accepts_any_width() -> None:
    assert decode_v1({"instances": [[1, 2]]}, None).tolist() == [[1.0, 2.0]]


def test_v1_single_flat_row_is_one_instance() -> None:
    assert decode_v1({"instances": [1, 2, 3]}, SIG).tolist() == [[1.0, 2.0, 3.0]]


# --- v2 -------------------------------------------------------------------------------


def test_v2_one_tensor_flat_data_row_major() -> None:
    body = {"inputs": [tensor("x", [2, 3], [1, 2, 3, 4, 5, 6])]}
    out = decode_v2(body, SIG)
    assert out.dtype == np.float64
    assert out.tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]


def test_v2_one_tensor_nested_data_row_major() -> None:
    body = {"inputs": [tensor("x", [2, 3], [[1.5, 2, 3], [4, 5, 6.25]])]}
    assert decode_v2(body, SIG).tolist() == [[1.5, 2.0, 3.0], [4.0, 5.0, 6.25]]


def test_v2_flat_and_nested_agree() -> None:
    flat = decode_v2({"inputs": [tensor("x", [3, 3], list(range(9)))]}, SIG)
    nested = decode_v2({"inputs": [tensor("x", [3, 3], [[0, 1, 2], [3, 4, 5], [6, 7, 8]])]}, SIG)
    assert np.array_equal(flat, nested)
    assert flat[:, 0].tolist() == [0.0, 3.0, 6.0]


def test_v2_per_feature_tensors_are_stacked_in_signature_order() -> None:
    body = {
        "inputs": [
            tensor("c", [2], [3, 30]),
            tensor("a", [2], [1, 10]),
            tensor("b", [2, 1], [[2], [20]], datatype="INT64"),
        ]
    }
    assert decode_v2(body, SIG).tolist() == [[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]]


def test_v2_accepts_other_numeric_datatypes() -> None:
    body = {"inputs": [tensor("x", [1, 3], [True, 0, 1], datatype="BOOL")]}
    assert decode_v2(body, SIG).tolist() == [[1.0, 0.0, 1.0]]


# --- bad requests ---------------------------------------------------------------------

BAD: list[tuple[str, Decoder, Any, list[str]]] = [
    ("v1 not a dict", decode_v1, [[1, 2, 3]], ["instances"]),
    ("v1 string body", decode_v1, "hello", ["instances"]),
    ("v1 no instances", decode_v1, {"inputs": []}, ["instances"]),
    ("v1 empty instances", decode_v1, {"instances": []}, ["non-empty"]),
    ("v1 instances not a list", decode_v1, {"instances": {"a": 1}}, ["non-empty list"]),
    ("v1 too narrow", decode_v1, {"instances": [[1, 2]]}, ["expected 3 features", "got 2"]),
    ("v1 too wide", decode_v1, {"instances": [[1, 2, 3, 4]]}, ["expected 3 features", "got 4"]),
    ("v1 ragged rows", decode_v1, {"instances": [[1, 2, 3], [1, 2]]}, ["equal-length rows"]),
    ("v1 missing key", decode_v1, {"instances": [{"a": 1, "b": 2}]}, ["missing ['c']"]),
    (
        "v1 unknown key",
        decode_v1,
        {"instances": [{"a": 1, "b": 2, "c": 3, "zz": 4}]},
        ["unknown ['zz']", "a, b, c"],
    ),
    (
        "v1 bad key in second row",
        decode_v1,
        {"instances": [{"a": 1, "b": 2, "c": 3}, {"a": 1, "b": 2}]},
        ["instances[1]", "missing ['c']"],
    ),
    ("v1 NaN", decode_v1, {"instances": [[1, math.nan, 3]]}, ["finite", "NaN"]),
    ("v1 inf", decode_v1, {"instances": [[1, 2, math.inf]]}, ["finite", "infinity"]),
    ("v1 -inf in object", decode_v1, {"instances": [{"a": -math.inf, "b": 1, "c": 2}]}, ["NaN"]),
    ("v1 3-D", decode_v1, {"instances": [[[1, 2, 3]]]}, ["2-D", "3-D"]),
    ("v1 words", decode_v1, {"instances": [["x", "y", "z"]]}, ["expected numbers"]),
    ("v2 not a dict", decode_v2, [1, 2, 3], ["inputs"]),
    ("v2 no inputs", decode_v2, {"instances": [[1, 2, 3]]}, ["inputs"]),
    ("v2 empty inputs", decode_v2, {"inputs": []}, ["non-empty"]),
    ("v2 tensor not a dict", decode_v2, {"inputs": [[1, 2, 3]]}, ["inputs[0]", "object"]),
    (
        "v2 missing data",
        decode_v2,
        {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64"}]},
        ["inputs[0]", "missing 'data'"],
    ),
    (
        "v2 missing shape",
        decode_v2,
        {"inputs": [{"name": "x", "datatype": "FP64", "data": [1, 2, 3]}]},
        ["missing 'shape'"],
    ),
    (
        "v2 shape/data mismatch",
        decode_v2,
        {"inputs": [tensor("x", [2, 3], [1, 2, 3, 4, 5])]},
        ["shape [2, 3]", "needs 6", "has 5"],
    ),
    (
        "v2 nested data too long",
        decode_v2,
        {"inputs": [tensor("x", [1, 3], [[1, 2, 3], [4, 5, 6]])]},
        ["shape [1, 3]", "needs 3", "has 6"],
    ),
    (
        "v2 STRING datatype",
        decode_v2,
        {"inputs": [tensor("x", [1, 3], [1, 2, 3], datatype="STRING")]},
        ["datatype", "'STRING'", "FP64"],
    ),
    (
        "v2 negative dim",
        decode_v2,
        {"inputs": [tensor("x", [-1, 3], [1, 2, 3])]},
        ["shape", "non-negative"],
    ),
    (
        "v2 float dim",
        decode_v2,
        {"inputs": [tensor("x", [1.0, 3], [1, 2, 3])]},
        ["shape", "integers"],
    ),
    (
        "v2 shape not a list",
        decode_v2,
        {"inputs": [tensor("x", "1x3", [1, 2, 3])]},
        ["shape", "list"],
    ),
    (
        "v2 string values",
        decode_v2,
        {"inputs": [tensor("x", [1, 3], [1, "2", 3])]},
        ["inputs[0].data", "expected numbers", "str"],
    ),
    (
        "v2 data not a list",
        decode_v2,
        {"inputs": [tensor("x", [1, 1], 5)]},
        ["inputs[0].data", "list"],
    ),
    (
        "v2 wrong width",
        decode_v2,
        {"inputs": [tensor("x", [1, 2], [1, 2])]},
        ["expected 3 features", "got 2"],
    ),
    (
        "v2 zero rows",
        decode_v2,
        {"inputs": [tensor("x", [0, 3], [])]},
        ["at least one row"],
    ),
    (
        "v2 NaN",
        decode_v2,
        {"inputs": [tensor("x", [1, 3], [1, math.nan, 3])]},
        ["finite"],
    ),
    (
        "v2 per-feature missing",
        decode_v2,
        {"inputs": [tensor("a", [1], [1]), tensor("b", [1], [2])]},
        ["missing c", "a, b, c"],
    ),
    (
        "v2 per-feature row counts differ",
        decode_v2,
        {"inputs": [tensor("a", [2], [1, 2]), tensor("b", [1], [2]), tensor("c", [2], [3, 4])]},
        ["same number of rows"],
    ),
    (
        "v2 second tensor bad",
        decode_v2,
        {"inputs": [tensor("a", [1], [1]), tensor("b", [1], [2], datatype="BYTES")]},
        ["inputs[1].datatype"],
    ),
]


@pytest.mark.parametrize(
    ("decode", "body", "fragments"),
    [pytest.param(decode, body, fragments, id=name) for name, decode, body, fragments in BAD],
)
def test_bad_requests_are_rejected_with_a_specific_message(
    decode: Decoder, body: Any, fragments: list[str]
) -> None:
    with pytest.raises(BadRequest) as info:
        decode(body, SIG)
    message = str(info.value)
    assert message.strip()
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_bad_request_is_a_value_error() -> None:
    assert issubclass(BadRequest, ValueError)


def test_v1_objects_need_a_signature() -> None:
    with pytest.raises(BadRequest, match="no signature"):
        decode_v1({"instances": [{"a": 1}]}, None)


def test_v2_per_feature_tensors_need_a_signature() -> None:
    body = {"inputs": [tensor("a", [1], [1]), tensor("b", [1], [2])]}
    with pytest.raises(BadRequest, match="no signature"):
        decode_v2(body, None)


@pytest.mark.parametrize(
    ("decode", "body"),
    [
        (decode_v1, {"instances": [[10**400, 1, 2]]}),
        (decode_v2, {"inputs": [tensor("x", [1, 3], [10**400, 1, 2])]}),
    ],
    ids=["v1", "v2"],
)
def test_huge_integers_are_a_bad_request(decode: Decoder, body: Any) -> None:
    with pytest.raises(BadRequest):
        decode(body, SIG)


# --- responses -------------------------------------------------------------------------


def test_one_score_per_row_encodes_as_before() -> None:
    scores = np.array([0.25, 0.5, 1.0])
    assert encode_v1(scores) == {"predictions": [0.25, 0.5, 1.0]}
    assert encode_v2_output(scores) == {
        "name": "score",
        "shape": [3],
        "datatype": "FP64",
        "data": [0.25, 0.5, 1.0],
    }
    assert all(type(v) is float for v in encode_v1(scores)["predictions"])


def test_rows_by_k_encode_as_lists_and_a_row_major_tensor() -> None:
    top = np.array([[7.0, 3.0, 9.0], [1.0, 2.0, 4.0]])
    assert encode_v1(top) == {"predictions": [[7.0, 3.0, 9.0], [1.0, 2.0, 4.0]]}
    out = encode_v2_output(top)
    assert out["shape"] == [2, 3]
    assert out["data"] == [7.0, 3.0, 9.0, 1.0, 2.0, 4.0]
    # The v2 tensor decodes back to the same matrix with the request decoder's rules.
    again = decode_v2({"inputs": [{**out, "name": "x"}]}, None)
    np.testing.assert_array_equal(again, top)


def test_an_encoded_2d_output_is_what_rollout_analysis_reads_per_row() -> None:
    import json

    from pilothouse.policy.analysis import predictions_from_body

    top = np.array([[7.0, 3.0], [1.0, 2.0], [5.0, 6.0]])
    v2 = json.dumps({"outputs": [encode_v2_output(top)]}).encode()
    v1 = json.dumps(encode_v1(top)).encode()
    expected = ((7.0, 3.0), (1.0, 2.0), (5.0, 6.0))
    assert predictions_from_body(v2) == expected
    assert predictions_from_body(v1) == expected


def test_empty_answer_encodes_as_an_empty_tensor() -> None:
    assert encode_v2_output(np.empty(0))["shape"] == [0]
    assert encode_v1(np.empty(0)) == {"predictions": []}


def test_more_than_two_dimensions_are_not_an_answer() -> None:
    with pytest.raises(ValueError, match="1-D or 2-D"):
        encode_v2_output(np.zeros((2, 2, 2)))
