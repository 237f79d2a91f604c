"""Request decoding and response encoding for the Open Inference Protocol v2 and v1 ``:predict``.

Pure functions from request bytes to a feature matrix, raising ``BadRequest``
with a message that names the field and what was expected
(``inputs[0].shape: expected ...``); the HTTP layer maps that to a 400. Every
input is checked before anything is allocated from it: a body that is not
UTF-8 JSON, JSON nested deeper than 1024 levels, numbers beyond float64,
integer literals beyond 64 bits, ``NaN``/``Infinity``, shapes that do not
match their data, datatypes that do not hold their values. And back: a
predictor's answer (one score per row, or rows x k values from a custom model)
as a v1 ``predictions`` list or a v2 output tensor; an answer JSON cannot carry
(NaN, infinity, more than two dimensions) raises ``BadOutput``, the model's
fault rather than the client's.

Bodies are parsed with orjson: strict RFC 8259 (no ``NaN`` literals), UTF-8
only, at most 1024 levels deep, integers within 64 bits kept exact and larger
ones turned into floats (which :func:`decode_request` refuses), numbers beyond
float64 refused.
"""

from __future__ import annotations

import math
import re
import reprlib
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

Bytes = bytes | bytearray | memoryview
Features = npt.NDArray[np.float64]

#: OIP datatypes as little-endian numpy dtypes (for the binary tensor extension).
BINARY_DTYPES = {
    "BOOL": "|b1",
    "UINT8": "|u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "|i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}


NUMERIC_DATATYPES = frozenset(BINARY_DTYPES)
_DATATYPES = ", ".join(sorted(NUMERIC_DATATYPES))
#: the deepest nesting orjson parses (arrays and objects)
MAX_JSON_DEPTH = 1024
#: JSON integers must fit in int64 or uint64, as in every OIP integer datatype
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
#: floats at least this large may come from integer literals orjson could not keep exact
_SUSPECT = float(2**63)
#: a JSON integer literal of 19+ digits, standing alone between JSON delimiters
_LONG_INTEGER = re.compile(rb"(?<=[\[,:\s])-?\d{19,}(?=[\s,\]}])")


class BadRequest(ValueError):
    """The request is malformed; the message says what was expected."""


class BadOutput(RuntimeError):
    """The model answered something a response cannot carry: the model's fault, not the client's."""


def feature_names(signature: dict[str, Any] | None) -> list[str]:
    if not signature:
        return []
    return [str(i["name"]) for i in signature.get("inputs", []) if "name" in i]


# --- bytes to JSON ---------------------------------------------------------------------


def split_binary(raw: Bytes, header_length: str | None) -> tuple[Bytes, Bytes]:
    """Split a binary-extension body into its JSON header and the raw tensor bytes (no copy)."""
    if header_length is None:
        return raw, b""
    if not (header_length.isascii() and header_length.isdigit()) or len(header_length) > 20:
        raise BadRequest(
            "Inference-Header-Content-Length: expected a non-negative integer in ASCII digits "
            f"(the JSON header's size in bytes), got {_show(header_length)}"
        )
    cut = int(header_length)
    if cut > len(raw):
        raise BadRequest(
            f"Inference-Header-Content-Length: expected at most the body size ({len(raw)} bytes), "
            f"got {cut}"
        )
    view = memoryview(raw)
    return view[:cut], view[cut:]


def parse_json(raw: Bytes, what: str = "request body") -> Any:
    """The JSON document in ``raw``, or ``BadRequest`` saying what is wrong with it."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(_json_error(exc, raw, what)) from exc


def _json_error(exc: orjson.JSONDecodeError, raw: Bytes, what: str) -> str:
    reason, at = exc.msg, f"line {exc.lineno} column {exc.colno}"
    if bytes(raw[exc.pos : exc.pos + 9]).lstrip(b"-").startswith((b"NaN", b"Infinity")):
        return f"{what}: NaN and Infinity are not JSON numbers (at {at}); expected finite numbers"
    if "zero-length" in reason:
        return f"{what} is empty: expected a JSON object"
    if "depth limit" in reason:
        return f"{what}: JSON nested too deeply (at most {MAX_JSON_DEPTH} levels), at {at}"
    if "infinity" in reason:
        return (
            f"{what}: number out of range at {at}: expected a finite float64 "
            "(magnitude below 1.8e308)"
        )
    if "UTF-8" in reason:
        return f"{what} is not valid UTF-8 ({reason}): JSON must be UTF-8 text"
    return f"{what} is not valid JSON: {reason} at {at}"


def check_integer_literals(raw: Bytes, what: str = "request body") -> None:
    """Refuse integer literals beyond 64 bits, which orjson silently turns into floats."""
    for match in _LONG_INTEGER.finditer(raw):
        token = match.group()
        digits = token.lstrip(b"-")
        if len(digits) <= 20 and _INT_MIN <= int(token) <= _INT_MAX:
            continue
        shown = token.decode() if len(token) <= 40 else f"{token[:37].decode()}..."
        raise BadRequest(
            f"{what}: integer {shown} (at char {match.start()}) is out of range: JSON "
            "integers must fit in 64 bits (int64 or uint64); write a large value as a float, "
            "e.g. 1.5e+21"
        )


def decode_request(
    protocol: str, raw: Bytes, header_length: str | None, signature: dict[str, Any] | None
) -> tuple[Features, Any]:
    """Bytes of a ``v1`` or ``v2`` request to (rows x features, the parsed JSON body)."""
    header, binary = split_binary(raw, header_length)
    what = "request body" if header_length is None else "JSON header"
    body = parse_json(header, what)
    if protocol == "v2":
        features = decode_v2(body, signature, binary)
    else:
        features = decode_v1(body, signature)
    if features.size and np.abs(features).max() >= _SUSPECT:
        check_integer_literals(header, what)
    return features, body


# --- JSON to arrays --------------------------------------------------------------------


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict = 3, 6, 4
_REPR.maxstring, _REPR.maxlong, _REPR.maxother = 40, 40, 40


def _show(value: Any, limit: int = 60) -> str:
    """A short repr of client input, whatever its size or depth (reprlib bounds both)."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _names(names: list[str], most: int = 5) -> str:
    """Names from a request, for a message: a few, each cut short."""
    shown = ", ".join(_show(n, 40).strip("'\"") for n in names[:most])
    return shown + (f", ... ({len(names) - most} more)" if len(names) > most else "")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return f"a string ({_show(value, 30)})"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _explain(data: list[Any], where: str) -> BadRequest:
    """Why ``data`` is not an array of numbers: the first offending element, by its path.

    The shape is read along the first elements (``data[0][0]...``); every list must
    then have its level's length and hold lists above the last level, numbers on it.
    """
    shape: list[int] = []
    probe: Any = data
    while isinstance(probe, list):
        if len(shape) == 32:
            return BadRequest(f"{where}: nested too deeply (expected rows of numbers)")
        shape.append(len(probe))
        probe = probe[0] if probe else None
    found = _offending(data, where, shape, 0)
    return found or BadRequest(f"{where}: expected numbers in equal-length rows")


def _offending(items: list[Any], path: str, shape: list[int], depth: int) -> BadRequest | None:
    if len(items) != shape[depth]:
        return BadRequest(
            f"{path}: expected equal-length rows of {shape[depth]} value(s), got {len(items)}"
        )
    inner = depth + 1 < len(shape)
    for i, item in enumerate(items):
        at = f"{path}[{i}]"
        if isinstance(item, list):
            if not inner:
                return BadRequest(f"{at}: expected a number, got a list")
            found = _offending(item, at, shape, depth + 1)
            if found is not None:
                return found
        elif isinstance(item, bool | int | float):
            if inner:
                return BadRequest(
                    f"{at}: expected a list of {shape[depth + 1]} values, got a number"
                )
            if isinstance(item, int) and not _INT_MIN <= item <= _INT_MAX:
                return BadRequest(f"{at}: integer out of range: expected one that fits in 64 bits")
        else:
            return BadRequest(f"{at}: expected numbers, got {_json_type(item)}")
    return None


def _numbers(data: list[Any], where: str) -> npt.NDArray[Any]:
    """Nested lists of JSON numbers as a numpy array (bool, int or float); else ``BadRequest``."""
    try:
        array = np.array(data)
    except (ValueError, TypeError, OverflowError) as exc:
        raise _explain(data, where) from exc
    if array.dtype.kind not in "biuf":
        raise _explain(data, where)
    return array


def _float64(array: npt.NDArray[Any], where: str) -> Features:
    values = array.astype(np.float64, copy=False)
    finite = np.isfinite(values)
    if not finite.all():
        index = np.unravel_index(int(np.argmin(finite)), values.shape)
        at = "".join(f"[{i}]" for i in index)
        raise BadRequest(
            f"{where}{at}: values must be finite numbers (no NaN or infinity), got {values[index].item()}"
        )
    return values


def _check_width(columns: int, names: list[str], where: str) -> None:
    if names and columns != len(names):
        raise BadRequest(
            f"{where}: expected {len(names)} features per row ({', '.join(names)}), got {columns}"
        )
    if columns == 0:
        raise BadRequest(f"{where}: expected at least one feature per row, got 0")


def _matrix(data: list[Any], where: str, names: list[str]) -> Features:
    """v1 rows: a 2-D array of rows x features (a flat list is one row)."""
    array = _numbers(data, where)
    if array.ndim == 1:
        array = array.reshape(1, -1)
    if array.ndim != 2:
        raise BadRequest(
            f"{where}: expected a 2-D array of rows x features, got {array.ndim}-D "
            f"(shape {list(array.shape)})"
        )
    _check_width(array.shape[1], names, f"{where}")
    return _float64(array, where)


def decode_v1(body: Any, signature: dict[str, Any] | None) -> Features:
    """``{"instances": [[...], ...]}`` or instances as objects keyed by feature name."""
    if not isinstance(body, dict) or "instances" not in body:
        raise BadRequest(
            'request body: expected a JSON object with "instances": a list of rows, '
            f"got {_json_type(body) if not isinstance(body, dict) else 'no instances'}"
        )
    instances = body["instances"]
    if not isinstance(instances, list) or not instances:
        raise BadRequest(
            f"instances: expected a non-empty list of rows, got {_json_type(instances)}"
            if not isinstance(instances, list)
            else "instances: expected a non-empty list of rows, got []"
        )
    names = feature_names(signature)
    if not all(isinstance(i, dict) for i in instances):
        return _matrix(instances, "instances", names)
    if not names:
        raise BadRequest(
            "instances: this model has no signature; send rows as lists of numbers in "
            "the order the model was trained on"
        )
    rows = []
    for n, instance in enumerate(instances):
        missing = [f for f in names if f not in instance]
        unknown = [f for f in instance if f not in names]
        if missing or unknown:
            raise BadRequest(
                f"instances[{n}]: missing [{_names(missing)}], unknown [{_names(unknown)}]; "
                f"expected keys: {', '.join(names)}"
            )
        row = [instance[f] for f in names]
        for f, value in zip(names, row, strict=True):
            if not isinstance(value, bool | int | float):
                raise BadRequest(f"instances[{n}].{f}: expected a number, got {_json_type(value)}")
        rows.append(row)
    return _matrix(rows, "instances", names)


def _binary_values(
    tensor: dict[str, Any], where: str, blob: Bytes, offset: int
) -> tuple[npt.NDArray[Any], int]:
    size = tensor["parameters"]["binary_data_size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BadRequest(
            f"{where}.parameters.binary_data_size: expected a non-negative integer, "
            f"got {_show(size)}"
        )
    if offset + size > len(blob):
        raise BadRequest(
            f"{where}.parameters.binary_data_size: {size} bytes from offset {offset} run past "
            f"the end of the binary data ({len(blob)} bytes)"
        )
    dtype = np.dtype(BINARY_DTYPES[tensor["datatype"]])
    if size % dtype.itemsize:
        raise BadRequest(
            f"{where}.parameters.binary_data_size: {size} bytes is not a whole number of "
            f"{tensor['datatype']} values ({dtype.itemsize} bytes each)"
        )
    values = np.frombuffer(blob, dtype=dtype, count=size // dtype.itemsize, offset=offset)
    if dtype.kind == "b" and size and values.view(np.uint8).max() > 1:
        raise BadRequest(f"{where}: BOOL binary data must be bytes 0 or 1")
    return values, offset + size


def _check_datatype(values: npt.NDArray[Any], datatype: str, where: str) -> None:
    """The values fit the declared datatype: integers in range for INT/UINT, 0/1 for BOOL."""
    if values.size == 0 or datatype == "FP64":
        return
    kind = values.dtype.kind
    if datatype == "BOOL":
        if kind == "b":
            return
        bad = (values != 0) & (values != 1)
        expected = "booleans (true/false or 0/1)"
    elif datatype.startswith(("INT", "UINT")):
        info = np.iinfo(BINARY_DTYPES[datatype])
        low, high = values.min(), values.max()
        if kind in "biu" and low >= info.min and high <= info.max:
            return
        bad = (values < info.min) | (values > info.max)
        if kind == "f":
            bad |= values != np.floor(values)
        expected = f"integers from {info.min} to {info.max}"
    else:  # FP16, FP32; NaN and infinity are refused later, as for every datatype
        limit = float(np.finfo(BINARY_DTYPES[datatype]).max)
        magnitude = np.abs(values)
        bad = (magnitude > limit) & np.isfinite(magnitude)
        expected = f"numbers within ±{limit:.6g}"
    if not bad.any():
        return
    index = np.unravel_index(int(np.argmax(bad)), values.shape)
    at = "".join(f"[{i}]" for i in index)
    raise BadRequest(
        f"{where}.data{at}: expected {datatype} values ({expected}), got {values[index].item()!r}"
    )


def _tensor(
    tensor: Any, where: str, blob: Bytes, offset: int
) -> tuple[str, list[int], Features, int]:
    """One OIP v2 input tensor: its name, shape and values (flat, float64)."""
    if not isinstance(tensor, dict):
        raise BadRequest(
            f"{where}: expected an object with name, shape, datatype, data, got {_json_type(tensor)}"
        )
    parameters = tensor.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise BadRequest(f"{where}.parameters: expected an object, got {_json_type(parameters)}")
    binary = "data" not in tensor and parameters is not None and "binary_data_size" in parameters
    for key in ("name", "shape", "datatype") if binary else ("name", "shape", "datatype", "data"):
        if key not in tensor:
            raise BadRequest(f"{where}: missing '{key}'")
    name, shape, datatype = tensor["name"], tensor["shape"], tensor["datatype"]
    if not isinstance(name, str):
        raise BadRequest(f"{where}.name: expected a string, got {_json_type(name)}")
    if not isinstance(datatype, str) or datatype not in NUMERIC_DATATYPES:
        raise BadRequest(f"{where}.datatype: expected one of {_DATATYPES}, got {_show(datatype)}")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise BadRequest(
            f"{where}.shape: expected a list of non-negative integers, got {_show(shape)}"
        )
    if len(shape) not in (1, 2):
        raise BadRequest(
            f"{where}.shape: expected [rows, features] (or [rows] / [rows, 1] for one "
            f"tensor per feature), got {_show(shape)}"
        )
    if shape[0] == 0:
        raise BadRequest(f"{where}.shape: expected at least one row, got {shape}")
    if len(shape) == 2 and shape[1] == 0:
        raise BadRequest(f"{where}.shape: expected at least one feature per row, got {shape}")
    if binary:
        array, offset = _binary_values(tensor, where, blob, offset)
    else:
        data = tensor["data"]
        if not isinstance(data, list):
            raise BadRequest(f"{where}.data: expected a list of numbers, got {_json_type(data)}")
        array = _numbers(data, f"{where}.data")
    expected = math.prod(shape)
    if array.size != expected:
        raise BadRequest(
            f"{where}.data: shape {shape} needs {expected} values, data has {array.size}"
        )
    _check_datatype(array, datatype, where)
    return name, shape, _float64(array.reshape(-1), f"{where}.data"), offset


def decode_v2(body: Any, signature: dict[str, Any] | None, binary: Bytes = b"") -> Features:
    """OIP v2 ``inputs``: one [N, F] tensor, or one [N] / [N, 1] tensor per named feature.

    Tensors may carry their data in the JSON ``data`` field or, with the binary
    tensor extension that Triton's and KServe's clients use, as raw bytes after
    the JSON header (``parameters.binary_data_size``).
    """
    if not isinstance(body, dict):
        raise BadRequest(
            'request body: expected a JSON object with "inputs": a non-empty list of tensors, '
            f"got {_json_type(body)}"
        )
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest(
            "inputs: expected a non-empty list of tensors, got "
            + ("[]" if isinstance(inputs, list) else _json_type(inputs))
        )
    names = feature_names(signature)
    offset = 0
    tensors: dict[str, tuple[list[int], Features]] = {}
    for n, item in enumerate(inputs):
        where = f"inputs[{n}]"
        name, shape, values, offset = _tensor(item, where, binary, offset)
        if name in tensors:
            raise BadRequest(f"{where}.name: input {_show(name)} is given twice")
        tensors[name] = (shape, values)
    if len(tensors) == 1:
        shape, values = next(iter(tensors.values()))
        if len(shape) == 2:
            _check_width(shape[1], names, "inputs[0].shape")
            return values.reshape(shape)
    if not names:
        raise BadRequest(
            "inputs: send one [rows, features] tensor (the model has no signature "
            "to match per-feature tensors by name)"
        )
    missing = [f for f in names if f not in tensors]
    unknown = [f for f in tensors if f not in names]
    if missing or unknown:
        raise BadRequest(
            f"inputs: missing {_names(missing) or 'nothing'}, unknown "
            f"{_names(unknown) or 'none'}; expected one [N, {len(names)}] tensor or one "
            f"tensor per feature ({', '.join(names)})"
        )
    rows = tensors[names[0]][0][0]
    for n, (shape, _) in enumerate(tensors.values()):
        if len(shape) == 2 and shape[1] != 1:
            raise BadRequest(
                f"inputs[{n}].shape: a per-feature tensor is [rows] or [rows, 1], got {shape}"
            )
        if shape[0] != rows:
            raise BadRequest(
                f"inputs[{n}].shape: per-feature tensors must all have the same number of "
                f"rows ({names[0]} has {rows}), got {shape}"
            )
    return np.stack([tensors[f][1] for f in names], axis=1)


# --- responses -------------------------------------------------------------------------


def _answer(outputs: npt.NDArray[np.float64]) -> Features:
    array = np.asarray(outputs, dtype=np.float64)
    if array.ndim not in (1, 2):
        raise BadOutput(f"a predictor answers 1-D or 2-D arrays, got shape {array.shape}")
    finite = np.isfinite(array)
    if not finite.all():
        rows = np.flatnonzero(~finite.reshape(array.shape[0], -1).all(axis=1))
        shown = ", ".join(str(r) for r in rows[:10]) + (", ..." if len(rows) > 10 else "")
        raise BadOutput(
            f"the model answered NaN or infinity for row(s) {shown}; JSON cannot carry them"
        )
    return array


def encode_v1(outputs: npt.NDArray[np.float64]) -> dict[str, Any]:
    """``{"predictions": [...]}``: a number per row, or a list of k numbers per row (rows x k)."""
    return {"predictions": _answer(outputs).tolist()}


def encode_v2_output(outputs: npt.NDArray[np.float64], name: str = "score") -> dict[str, Any]:
    """One OIP v2 output tensor: shape ``[rows]`` or ``[rows, k]``, data flat in row-major order."""
    array = _answer(outputs)
    return {
        "name": name,
        "shape": list(array.shape),
        "datatype": "FP64",
        "data": array.reshape(-1).tolist(),
    }
