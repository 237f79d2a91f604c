"""Unit tests for v1 / OIP v2 request decoding and response encoding."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pilothouse.serving.protocol import (
    BINARY_DTYPES,
    BadOutput,
    BadRequest,
    decode_request,
    decode_v1,
    decode_v2,
    encode_v1,
    encode_v2_output,
    feature_names,
    split_binary,
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
    (
        "v1 ragged rows",
        decode_v1,
        {"instances": [[1, 2, 3], [1, 2]]},
        ["instances[1]", "equal-length rows of 3", "got 2"],
    ),
    ("v1 missing key", decode_v1, {"instances": [{"a": 1, "b": 2}]}, ["missing [c]"]),
    (
        "v1 unknown key",
        decode_v1,
        {"instances": [{"a": 1, "b": 2, "c": 3, "zz": 4}]},
        ["unknown [zz]", "a, b, c"],
    ),
    (
        "v1 bad key in second row",
        decode_v1,
        {"instances": [{"a": 1, "b": 2, "c": 3}, {"a": 1, "b": 2}]},
        ["instances[1]", "missing [c]"],
    ),
    ("v1 NaN", decode_v1, {"instances": [[1, math.nan, 3]]}, ["finite", "NaN"]),
    ("v1 inf", decode_v1, {"instances": [[1, 2, math.inf]]}, ["finite", "infinity"]),
    ("v1 -inf in object", decode_v1, {"instances": [{"a": -math.inf, "b": 1, "c": 2}]}, ["NaN"]),
    ("v1 3-D", decode_v1, {"instances": [[[1, 2, 3]]]}, ["2-D", "3-D"]),
    ("v1 words", decode_v1, {"instances": [["x", "y", "z"]]}, ["instances[0][0]", "string"]),
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
        ["inputs[0].data[1]", "expected numbers", "a string ('2')"],
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
    with pytest.raises(BadOutput, match="1-D or 2-D"):
        encode_v2_output(np.zeros((2, 2, 2)))


# --- request bytes: everything a client can send is a value or a BadRequest -----------

FRAUD_LIKE: dict[str, Any] = SIG


def v2_body(shape: str, data: str, datatype: str = "FP64") -> bytes:
    return (
        f'{{"inputs": [{{"name": "x", "shape": {shape}, "datatype": "{datatype}", '
        f'"data": {data}}}]}}'
    ).encode()


RAW_BAD: list[tuple[str, str, bytes, str | None, list[str]]] = [
    # (id, protocol, body, Inference-Header-Content-Length, fragments of the message)
    ("empty body", "v1", b"", None, ["request body is empty", "JSON object"]),
    ("whitespace body", "v2", b"  \n", None, ["request body is not valid JSON"]),
    ("not JSON", "v2", b"{not json", None, ["not valid JSON", "line 1 column 2"]),
    ("non-UTF-8", "v1", b'{"instances": [[1, 2, 3]], "x": "\xff"}', None, ["UTF-8"]),
    ("lone surrogate", "v1", b'{"x": "\xed\xa0\x80"}', None, ["UTF-8"]),
    ("deep nesting", "v2", b"[" * 100_000, None, ["nested too deeply", "1024"]),
    ("deep objects", "v1", b'{"a":' * 5000, None, ["nested too deeply"]),
    ("NaN literal", "v1", b'{"instances": [[NaN, 1, 2]]}', None, ["NaN and Infinity", "column 17"]),
    ("Infinity literal", "v2", v2_body("[1, 3]", "[1, Infinity, 3]"), None, ["NaN and Infinity"]),
    ("-Infinity literal", "v1", b'{"instances": [[-Infinity, 1, 2]]}', None, ["NaN and Infinity"]),
    ("1e400", "v1", b'{"instances": [[1e400, 1, 2]]}', None, ["out of range", "float64"]),
    ("-1e999", "v2", v2_body("[1, 3]", "[1, -1e999, 3]"), None, ["out of range", "float64"]),
    (
        "2**70 in v1",
        "v1",
        b'{"instances": [[1180591620717411303424, 1, 2]]}',
        None,
        ["integer 1180591620717411303424", "64 bits"],
    ),
    (
        "2**70 in an FP64 tensor",
        "v2",
        v2_body("[1, 3]", "[1, 2, 1180591620717411303424]"),
        None,
        ["integer 1180591620717411303424", "64 bits"],
    ),
    (
        "-2**63-1 in v1",
        "v1",
        b'{"instances": [[-9223372036854775809, 1, 2]]}',
        None,
        ["integer -9223372036854775809", "64 bits"],
    ),
    (
        "a 400-digit integer",
        "v1",
        b'{"instances": [[' + b"9" * 400 + b", 1, 2]]}",
        None,
        ["number out of range", "float64"],
    ),
    (
        "2**70 in an INT64 tensor",
        "v2",
        v2_body("[1, 3]", "[1, 2, 1180591620717411303424]", "INT64"),
        None,
        ["inputs[0].data[2]", "INT64", "integers from -9223372036854775808"],
    ),
    ("top-level list v2", "v2", b"[1, 2, 3]", None, ["JSON object", '"inputs"', "a list"]),
    ("top-level list v1", "v1", b"[[1, 2, 3]]", None, ["JSON object", '"instances"']),
    ("top-level string", "v1", b'"hello"', None, ["JSON object", "a string"]),
    ("top-level null", "v2", b"null", None, ["JSON object", "null"]),
    ("top-level number", "v2", b"42", None, ["JSON object", "int"]),
    ("top-level true", "v1", b"true", None, ["JSON object", "a boolean"]),
    ("inputs not a list", "v2", b'{"inputs": {"x": 1}}', None, ["inputs: expected", "an object"]),
    ("instances null", "v1", b'{"instances": null}', None, ["instances: expected", "null"]),
    # the binary tensor extension's header length
    (
        "length: Arabic-Indic digit",
        "v2",
        b"{}",
        "\u0663",
        ["Inference-Header-Content-Length", "ASCII"],
    ),
    (
        "length: fullwidth digit",
        "v2",
        b"{}",
        "\uff13",
        ["Inference-Header-Content-Length", "ASCII"],
    ),
    ("length: superscript two", "v2", b"{}", "\u00b2", ["Inference-Header-Content-Length"]),
    ("length: negative", "v2", b"{}", "-1", ["Inference-Header-Content-Length", "'-1'"]),
    ("length: garbage", "v2", b"{}", "ten", ["Inference-Header-Content-Length", "'ten'"]),
    ("length: empty", "v2", b"{}", "", ["Inference-Header-Content-Length"]),
    ("length: float", "v2", b"{}", "2.0", ["Inference-Header-Content-Length"]),
    ("length: 5000 digits", "v2", b"{}", "9" * 5000, ["Inference-Header-Content-Length", "..."]),
    ("length: past the body", "v2", b"{}", "3", ["at most the body size (2 bytes)", "got 3"]),
    ("length: zero", "v2", b"{}", "0", ["JSON header is empty"]),
    # shapes and datatypes
    (
        "shape 2**64-1 x 0",
        "v2",
        v2_body("[18446744073709551615, 0]", "[]"),
        None,
        ["inputs[0].shape", "at least one feature"],
    ),
    (
        "shape 2**70 x 1",
        "v2",
        v2_body("[1180591620717411303424, 1]", "[]"),
        None,
        ["inputs[0].shape", "non-negative integers"],
    ),
    (
        "shape huge, data small",
        "v2",
        v2_body("[4294967296, 4294967296]", "[1]"),
        None,
        ["needs 18446744073709551616 values", "has 1"],
    ),
    ("shape 0 rows", "v2", v2_body("[0, 3]", "[]"), None, ["inputs[0].shape", "at least one row"]),
    (
        "shape 3-D",
        "v2",
        v2_body("[1, 1, 3]", "[1, 2, 3]"),
        None,
        ["inputs[0].shape", "[rows, features]"],
    ),
    ("shape []", "v2", v2_body("[]", "[1]"), None, ["inputs[0].shape", "[rows, features]"]),
    ("shape of booleans", "v2", v2_body("[true, 3]", "[1, 2, 3]"), None, ["inputs[0].shape"]),
    ("shape with null", "v2", v2_body("[null, 3]", "[1, 2, 3]"), None, ["inputs[0].shape"]),
    (
        "datatype list",
        "v2",
        v2_body("[1, 3]", "[1, 2, 3]").replace(b'"FP64"', b"[]"),
        None,
        ["inputs[0].datatype", "got []"],
    ),
    (
        "datatype object",
        "v2",
        v2_body("[1, 3]", "[1, 2, 3]").replace(b'"FP64"', b'{"a": 1}'),
        None,
        ["inputs[0].datatype"],
    ),
    (
        "datatype lower case",
        "v2",
        v2_body("[1, 3]", "[1, 2, 3]", "fp64"),
        None,
        ["inputs[0].datatype", "'fp64'"],
    ),
    (
        "datatype BYTES",
        "v2",
        v2_body("[1, 3]", '["a", "b", "c"]', "BYTES"),
        None,
        ["inputs[0].datatype", "'BYTES'"],
    ),
    (
        "INT32 with a fraction",
        "v2",
        v2_body("[1, 3]", "[1, 2.5, 3]", "INT32"),
        None,
        ["inputs[0].data[1]", "INT32", "2.5"],
    ),
    (
        "UINT8 negative",
        "v2",
        v2_body("[1, 3]", "[1, -1, 3]", "UINT8"),
        None,
        ["inputs[0].data[1]", "UINT8", "from 0 to 255"],
    ),
    (
        "UINT8 too big",
        "v2",
        v2_body("[1, 3]", "[1, 2, 256]", "UINT8"),
        None,
        ["inputs[0].data[2]", "UINT8"],
    ),
    (
        "INT8 nested too big",
        "v2",
        v2_body("[1, 3]", "[[1, 2, 300]]", "INT8"),
        None,
        ["inputs[0].data[0][2]", "INT8"],
    ),
    ("BOOL 2", "v2", v2_body("[1, 3]", "[1, 2, 0]", "BOOL"), None, ["inputs[0].data[1]", "BOOL"]),
    (
        "FP32 too big",
        "v2",
        v2_body("[1, 3]", "[1, 1e39, 0]", "FP32"),
        None,
        ["inputs[0].data[1]", "FP32"],
    ),
    (
        "FP16 too big",
        "v2",
        v2_body("[1, 3]", "[1, 70000, 0]", "FP16"),
        None,
        ["inputs[0].data[1]", "FP16"],
    ),
    # values
    (
        "string value",
        "v2",
        v2_body("[1, 3]", '[1, "2", 3]'),
        None,
        ["inputs[0].data[1]", "a string ('2')"],
    ),
    ("null value", "v2", v2_body("[1, 3]", "[1, null, 3]"), None, ["inputs[0].data[1]", "null"]),
    (
        "object value",
        "v2",
        v2_body("[1, 3]", '[1, {"v": 2}, 3]'),
        None,
        ["inputs[0].data[1]", "an object"],
    ),
    ("data a string", "v2", v2_body("[1, 3]", '"1,2,3"'), None, ["inputs[0].data", "a string"]),
    ("data an object", "v2", v2_body("[1, 3]", '{"a": 1}'), None, ["inputs[0].data", "an object"]),
    (
        "ragged data",
        "v2",
        v2_body("[2, 3]", "[[1, 2, 3], [4, 5]]"),
        None,
        ["inputs[0].data[1]", "equal-length rows of 3"],
    ),
    (
        "deeply ragged data",
        "v2",
        v2_body("[2, 2]", "[[[1], [2]], [[3], [4, 5]]]"),
        None,
        ["inputs[0].data[1][1]", "of 1 value(s), got 2"],
    ),
    (
        "number then list",
        "v2",
        v2_body("[1, 3]", "[1, [2, 3]]"),
        None,
        ["inputs[0].data[1]", "expected a number, got a list"],
    ),
    (
        "deep data",
        "v2",
        v2_body("[1, 1]", "[" * 100 + "1" + "]" * 100),
        None,
        ["inputs[0].data", "nested too deeply"],
    ),
    ("v1 ragged deep", "v1", b'{"instances": [[1, 2, 3], [1, 2, [3]]]}', None, ["instances[1][2]"]),
    (
        "v1 deep",
        "v1",
        b'{"instances": ' + b"[" * 50 + b"1" + b"]" * 50 + b"}",
        None,
        ["instances", "2-D", "50-D"],
    ),
    (
        "v1 no features",
        "v1",
        b'{"instances": [[]]}',
        None,
        ["instances", "expected 3 features", "got 0"],
    ),
    (
        "v1 object with a string",
        "v1",
        b'{"instances": [{"a": 1, "b": "2", "c": 3}]}',
        None,
        ["instances[0].b", "a string"],
    ),
    (
        "v1 object with a list",
        "v1",
        b'{"instances": [{"a": 1, "b": [2], "c": 3}]}',
        None,
        ["instances[0].b", "a list"],
    ),
    (
        "v1 mixed rows",
        "v1",
        b'{"instances": [{"a": 1, "b": 2, "c": 3}, [1, 2, 3]]}',
        None,
        ["instances[0]", "an object"],
    ),
    # tensors
    (
        "name not a string",
        "v2",
        v2_body("[1, 3]", "[1, 2, 3]").replace(b'"x"', b"7"),
        None,
        ["inputs[0].name", "a string"],
    ),
    (
        "duplicate tensor",
        "v2",
        b'{"inputs": [{"name": "a", "shape": [1], "datatype": "FP64", "data": [1]},'
        b' {"name": "a", "shape": [1], "datatype": "FP64", "data": [1]}]}',
        None,
        ["inputs[1].name", "'a' is given twice"],
    ),
    (
        "per-feature tensor too wide",
        "v2",
        b'{"inputs": [{"name": "a", "shape": [1, 2], "datatype": "FP64", "data": [1, 2]},'
        b' {"name": "b", "shape": [1], "datatype": "FP64", "data": [1]},'
        b' {"name": "c", "shape": [1], "datatype": "FP64", "data": [1]}]}',
        None,
        ["inputs[0].shape", "[rows] or [rows, 1]"],
    ),
    (
        "unknown per-feature tensor",
        "v2",
        b'{"inputs": [{"name": "a", "shape": [1], "datatype": "FP64", "data": [1]},'
        b' {"name": "zz", "shape": [1], "datatype": "FP64", "data": [1]}]}',
        None,
        ["unknown zz", "missing b, c"],
    ),
    (
        "parameters not an object",
        "v2",
        b'{"inputs": [{"name": "x", "parameters": [1]}]}',
        None,
        ["inputs[0].parameters", "an object"],
    ),
]


DEEP = "[" * 1000 + "]" * 1000
RAW_BAD += [
    (
        "deep datatype",
        "v2",
        v2_body("[1, 3]", "[1, 2, 3]", "@").replace(b'"@"', DEEP.encode()),
        None,
        ["inputs[0].datatype", "[[[[...]]]]"],
    ),
    ("deep shape", "v2", v2_body(DEEP, "[1, 2, 3]"), None, ["inputs[0].shape", "[[[[...]]]]"]),
    (
        "deep name",
        "v2",
        v2_body("[1, 3]", "[1, 2, 3]").replace(b'"x"', DEEP.encode()),
        None,
        ["inputs[0].name", "a list"],
    ),
    (
        "deep binary_data_size",
        "v2",
        b'{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64", "parameters": {"binary_data_size": '
        + DEEP.encode()
        + b"}}]}",
        None,
        ["binary_data_size", "[[[[...]]]]"],
    ),
    (
        "a shape of 100000 dims",
        "v2",
        v2_body("[" + ", ".join(["1"] * 100_000) + "]", "[1]"),
        None,
        ["inputs[0].shape", "[1, 1, 1, 1, 1, 1, ...]"],
    ),
    (
        "a long unknown key",
        "v1",
        b'{"instances": [{"' + b"k" * 100_000 + b'": 1}]}',
        None,
        ["unknown [kkkk", "...", "expected keys: a, b, c"],
    ),
    (
        "many unknown keys",
        "v1",
        orjson.dumps({"instances": [{f"k{i}": 1 for i in range(10_000)}]}),
        None,
        ["unknown [k0, k1, k2, k3, k4, ... (9995 more)]"],
    ),
    (
        "a long duplicate name",
        "v2",
        orjson.dumps(
            {"inputs": [{"name": "n" * 10_000, "shape": [1], "datatype": "FP64", "data": [1]}] * 2}
        ),
        None,
        ["inputs[1].name", "nnn...nnn", "given twice"],
    ),
]


@pytest.mark.parametrize(
    ("protocol", "raw", "length", "fragments"),
    [pytest.param(*case[1:], id=case[0]) for case in RAW_BAD],
)
def test_bad_request_bytes_are_a_bad_request_naming_the_problem(
    protocol: str, raw: bytes, length: str | None, fragments: list[str]
) -> None:
    with pytest.raises(BadRequest) as info:
        decode_request(protocol, raw, length, FRAUD_LIKE)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert len(message) < 400, "messages stay short whatever the input holds"


@pytest.mark.parametrize(
    ("protocol", "raw", "expected"),
    [
        ("v1", b'{"instances": [[1, 2, 3]]}', [[1.0, 2.0, 3.0]]),
        ("v1", b'{"instances": [[9223372036854775807, 0, 0]]}', [[2.0**63, 0.0, 0.0]]),
        ("v1", b'{"instances": [[18446744073709551615, 0, 0]]}', [[2.0**64, 0.0, 0.0]]),
        ("v1", b'{"instances": [[-9223372036854775808, 0, 0]]}', [[-(2.0**63), 0.0, 0.0]]),
        ("v1", b'{"instances": [[1e300, -1e-300, 4.9e-400]]}', [[1e300, -1e-300, 0.0]]),
        (
            "v1",
            b'{"instances": [[1.5e21, 0, 0]], "id": "12345678901234567890123"}',
            [[1.5e21, 0, 0]],
        ),
        ("v2", v2_body("[1, 3]", "[true, false, 1]", "BOOL"), [[1.0, 0.0, 1.0]]),
        ("v2", v2_body("[1, 3]", "[255, 0, 7.0]", "UINT8"), [[255.0, 0.0, 7.0]]),
        ("v2", v2_body("[1, 3]", "[-128, 127, 0]", "INT8"), [[-128.0, 127.0, 0.0]]),
        ("v2", v2_body("[1, 3]", "[65504, -65504, 0.5]", "FP16"), [[65504.0, -65504.0, 0.5]]),
        ("v2", v2_body("[1, 3]", "[1e300, 0, 0]"), [[1e300, 0.0, 0.0]]),
    ],
)
def test_edge_values_that_fit_are_accepted(protocol: str, raw: bytes, expected: Any) -> None:
    features, body = decode_request(protocol, raw, None, FRAUD_LIKE)
    assert isinstance(body, dict)
    assert features.dtype == np.float64
    assert features.tolist() == expected


def binary_request(values: np.ndarray, datatype: str, size: int | None = None) -> tuple[bytes, str]:
    blob = values.tobytes()
    header = {
        "inputs": [
            {
                "name": "x",
                "shape": list(values.shape),
                "datatype": datatype,
                "parameters": {"binary_data_size": len(blob) if size is None else size},
            }
        ]
    }
    encoded = json.dumps(header).encode()
    return encoded + blob, str(len(encoded))


def test_binary_tensors_decode_without_copying_the_body() -> None:
    rows = np.arange(6, dtype="<f4").reshape(2, 3)
    raw, length = binary_request(rows, "FP32")
    header, blob = split_binary(raw, length)
    assert isinstance(header, memoryview)
    assert isinstance(blob, memoryview)
    assert bytes(blob) == rows.tobytes()
    features, _ = decode_request("v2", raw, length, FRAUD_LIKE)
    assert features.tolist() == rows.astype(np.float64).tolist()


@pytest.mark.parametrize(
    ("values", "datatype", "size", "fragments"),
    [
        (np.array([[1.0, np.nan, 3.0]]), "FP64", None, ["inputs[0].data[1]", "finite", "nan"]),
        (np.array([[1.0, np.inf, 3.0]], dtype="<f4"), "FP32", None, ["finite", "inf"]),
        (np.array([[1, 2, 3]], dtype="|u1"), "BOOL", None, ["BOOL binary data", "0 or 1"]),
        (np.array([[1.0, 2.0, 3.0]]), "FP64", 23, ["binary_data_size", "whole number", "8 bytes"]),
        (np.array([[1.0, 2.0, 3.0]]), "FP64", 32, ["binary_data_size", "run past the end"]),
        (np.array([[1.0, 2.0, 3.0]]), "FP64", -8, ["binary_data_size", "non-negative"]),
        (np.array([[1.0, 2.0, 3.0]]), "FP64", 2**70, ["binary_data_size", "non-negative integer"]),
        (np.array([[1.0, 2.0]]), "FP64", None, ["inputs[0].shape", "expected 3 features", "got 2"]),
        (np.array([[1.0, 2.0, 3.0]]), "STRING", None, ["inputs[0].datatype", "'STRING'"]),
    ],
)
def test_bad_binary_tensors_are_a_bad_request(
    values: np.ndarray, datatype: str, size: int | None, fragments: list[str]
) -> None:
    raw, length = binary_request(values, datatype, size)
    if datatype == "FP64" and values.shape[1] == 2:
        raw, length = binary_request(values, datatype)
    with pytest.raises(BadRequest) as info:
        decode_request("v2", raw, length, FRAUD_LIKE)
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} not in {info.value}"


def test_binary_tensor_shape_must_match_its_bytes() -> None:
    raw, length = binary_request(np.zeros((2, 3)), "FP64")
    raw = raw.replace(b"[2, 3]", b"[3, 3]")
    with pytest.raises(BadRequest, match=r"shape \[3, 3\] needs 9 values, data has 6"):
        decode_request("v2", raw, length, FRAUD_LIKE)


@pytest.mark.parametrize(
    "outputs",
    [np.array([0.5, np.nan, 0.25]), np.array([[1.0, 2.0], [np.inf, 0.0]]), np.array([-np.inf])],
    ids=["nan", "inf in rows x k", "-inf"],
)
def test_an_answer_with_nan_or_infinity_is_the_models_fault(outputs: np.ndarray) -> None:
    for encode in (encode_v1, encode_v2_output):
        with pytest.raises(BadOutput, match="NaN or infinity for row") as info:
            encode(outputs)
        assert not isinstance(info.value, ValueError), "not the client's fault"


# --- properties -----------------------------------------------------------------------

EXAMPLES = 150

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["inputs", "instances", "name", "shape", "datatype", "data", "a", "b"]),
            children,
            max_size=4,
        )
    ),
    max_leaves=20,
)


def _encode(value: Any) -> bytes:
    return json.dumps(value).encode()  # orjson refuses integers beyond 64 bits


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    protocol=st.sampled_from(["v1", "v2"]),
    raw=st.binary(max_size=64) | json_values.map(_encode),
    length=st.none() | st.text(max_size=4),
)
def test_any_bytes_decode_to_finite_features_or_a_bad_request(
    protocol: str, raw: bytes, length: str | None
) -> None:
    try:
        features, _ = decode_request(protocol, raw, length, FRAUD_LIKE)
    except BadRequest:
        return
    assert features.dtype == np.float64
    assert features.ndim == 2
    assert features.shape[0] >= 1
    assert features.shape[1] == 3
    assert np.isfinite(features).all()


tensors = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["x", "a", "b", "c"]) | json_values,
        "shape": st.lists(st.integers(min_value=-1, max_value=2**64), max_size=3) | json_values,
        "datatype": st.sampled_from(sorted(BINARY_DTYPES)) | json_values,
        "data": st.lists(st.integers(-300, 300) | st.floats(allow_nan=False), max_size=7)
        | json_values,
    }
)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(inputs=st.lists(tensors, min_size=1, max_size=3))
def test_any_v2_tensors_decode_or_are_a_bad_request(inputs: list[dict[str, Any]]) -> None:
    try:
        features, _ = decode_request("v2", _encode({"inputs": inputs}), None, FRAUD_LIKE)
    except BadRequest:
        return
    assert features.shape[1] == 3
    assert np.isfinite(features).all()


@settings(max_examples=100, deadline=None)
@given(
    rows=st.lists(
        st.lists(
            st.floats(allow_nan=False, allow_infinity=False, width=64), min_size=3, max_size=3
        ),
        min_size=1,
        max_size=5,
    )
)
def test_valid_rows_round_trip_through_v1_and_v2(rows: list[list[float]]) -> None:
    v1, _ = decode_request("v1", orjson.dumps({"instances": rows}), None, FRAUD_LIKE)
    body = {"inputs": [{"name": "x", "shape": [len(rows), 3], "datatype": "FP64", "data": rows}]}
    v2, _ = decode_request("v2", orjson.dumps(body), None, FRAUD_LIKE)
    assert v1.tolist() == rows
    assert v2.tolist() == rows
