"""Request decoding and response encoding for the Open Inference Protocol v2 and v1 ``:predict``.

Pure functions from JSON bodies to a feature matrix, raising ``BadRequest``
with a message that says which input was wrong and how; the HTTP layer maps
that to a 400. And back: a predictor's answer (one score per row, or rows x k
values from a custom model) as a v1 ``predictions`` list or a v2 output tensor.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

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


class BadRequest(ValueError):
    """The request is malformed; the message says what was expected."""


def feature_names(signature: dict[str, Any] | None) -> list[str]:
    if not signature:
        return []
    return [str(i["name"]) for i in signature.get("inputs", []) if "name" in i]


def _only_numbers(rows: Any, what: str, depth: int = 0) -> None:
    """JSON numbers only: strings like "1" are refused, as in OIP tensors."""
    if isinstance(rows, np.ndarray):
        return
    if isinstance(rows, list):
        if depth > 3:
            raise BadRequest(f"{what}: nested too deeply")
        for item in rows:
            _only_numbers(item, what, depth + 1)
    elif not isinstance(rows, bool | int | float):
        raise BadRequest(f"{what}: expected numbers, got {type(rows).__name__}")


def _matrix(rows: Any, what: str) -> npt.NDArray[np.float64]:
    _only_numbers(rows, what)
    try:
        array = np.asarray(rows, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise BadRequest(f"{what}: expected numbers in equal-length rows ({exc})") from exc
    if array.ndim == 1:
        array = array.reshape(1, -1)
    if array.ndim != 2:
        raise BadRequest(f"{what}: expected a 2-D array of rows x features, got {array.ndim}-D")
    if not np.all(np.isfinite(array)):
        raise BadRequest(f"{what}: values must be finite numbers (no NaN or infinity)")
    return array


def _check_width(array: npt.NDArray[np.float64], names: list[str], what: str) -> None:
    if names and array.shape[1] != len(names):
        raise BadRequest(
            f"{what}: expected {len(names)} features per row ({', '.join(names)}), "
            f"got {array.shape[1]}"
        )


def decode_v1(body: Any, signature: dict[str, Any] | None) -> npt.NDArray[np.float64]:
    """``{"instances": [[...], ...]}`` or instances as objects keyed by feature name."""
    if not isinstance(body, dict) or "instances" not in body:
        raise BadRequest('expected a JSON object with "instances": a list of rows')
    instances = body["instances"]
    if not isinstance(instances, list) or not instances:
        raise BadRequest('"instances": expected a non-empty list')
    names = feature_names(signature)
    if all(isinstance(i, dict) for i in instances):
        if not names:
            raise BadRequest('"instances": this model has no signature; send rows as lists')
        rows = []
        for n, instance in enumerate(instances):
            missing = [f for f in names if f not in instance]
            unknown = [f for f in instance if f not in names]
            if missing or unknown:
                raise BadRequest(
                    f'"instances[{n}]": missing {missing or "nothing"}, unknown {unknown or "none"}; '
                    f"expected keys: {', '.join(names)}"
                )
            rows.append([instance[f] for f in names])
        array = _matrix(rows, '"instances"')
    else:
        array = _matrix(instances, '"instances"')
    _check_width(array, names, '"instances"')
    return array


def split_binary(raw: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """Split a binary-extension body into its JSON header and the raw tensor bytes."""
    if header_length is None:
        return raw, b""
    if not header_length.isdigit() or int(header_length) > len(raw):
        raise BadRequest(
            f"Inference-Header-Content-Length: expected an integer ≤ the body size ({len(raw)}), "
            f"got {header_length!r}"
        )
    cut = int(header_length)
    return raw[:cut], raw[cut:]


def _binary_values(
    tensor: dict[str, Any], where: str, blob: bytes, offset: int
) -> tuple[list[Any], int]:
    size = tensor.get("parameters", {}).get("binary_data_size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BadRequest(f"{where}.parameters.binary_data_size: expected a non-negative integer")
    if offset + size > len(blob):
        raise BadRequest(f"{where}: binary_data_size {size} runs past the end of the body")
    dtype = BINARY_DTYPES.get(str(tensor.get("datatype")))
    if dtype is None:
        raise BadRequest(f"{where}.datatype: binary data needs a numeric datatype")
    itemsize = np.dtype(dtype).itemsize
    if size % itemsize:
        raise BadRequest(
            f"{where}: {size} bytes is not a whole number of {tensor['datatype']} values"
        )
    values = np.frombuffer(blob, dtype=dtype, count=size // itemsize, offset=offset)
    return values.astype(np.float64).tolist(), offset + size


def decode_v2(
    body: Any, signature: dict[str, Any] | None, binary: bytes = b""
) -> npt.NDArray[np.float64]:
    """OIP v2 ``inputs``: one [N, F] tensor, or one [N] / [N, 1] tensor per named feature.

    Tensors may carry their data in the JSON ``data`` field or, with the binary
    tensor extension that Triton's and KServe's clients use, as raw bytes after
    the JSON header (``parameters.binary_data_size``).
    """
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or not body["inputs"]:
        raise BadRequest('expected a JSON object with "inputs": a non-empty list of tensors')
    tensors = []
    offset = 0
    for n, tensor in enumerate(body["inputs"]):
        where = f"inputs[{n}]"
        if not isinstance(tensor, dict):
            raise BadRequest(f"{where}: expected an object with name, shape, datatype, data")
        parameters = tensor.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise BadRequest(f"{where}.parameters: expected an object")
        if "data" not in tensor and parameters and "binary_data_size" in parameters:
            tensor = {**tensor}
            tensor["data"], offset = _binary_values(tensor, where, binary, offset)
        for key in ("name", "shape", "datatype", "data"):
            if key not in tensor:
                raise BadRequest(f"{where}: missing '{key}'")
        shape, datatype, data = tensor["shape"], tensor["datatype"], tensor["data"]
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise BadRequest(f"{where}.shape: expected a list of non-negative integers")
        if datatype not in NUMERIC_DATATYPES:
            raise BadRequest(
                f"{where}.datatype: expected one of {', '.join(sorted(NUMERIC_DATATYPES))}, "
                f"got {datatype!r}"
            )
        flat = _flatten(data, where)
        expected = math.prod(shape) if shape else 1
        if len(flat) != expected:
            raise BadRequest(
                f"{where}: shape {shape} needs {expected} values, data has {len(flat)}"
            )
        try:
            values = np.asarray(flat, dtype=np.float64)
        except (TypeError, ValueError, OverflowError) as exc:
            raise BadRequest(f"{where}.data: expected numbers for {datatype}") from exc
        tensors.append((str(tensor["name"]), shape, values))
    names = feature_names(signature)
    if len(tensors) == 1 and len(tensors[0][1]) == 2:
        _, shape, values = tensors[0]
        array = _matrix(values.reshape(shape), "inputs[0]")
    else:
        by_name = {name: (shape, values) for name, shape, values in tensors}
        if not names:
            raise BadRequest(
                "inputs: send one [rows, features] tensor (the model has no signature)"
            )
        missing = [f for f in names if f not in by_name]
        if missing:
            raise BadRequest(
                f"inputs: missing {', '.join(missing)}; expected one [N, {len(names)}] tensor "
                f"or one tensor per feature ({', '.join(names)})"
            )
        columns = [by_name[f][1].reshape(-1) for f in names]
        if len({len(c) for c in columns}) != 1:
            raise BadRequest("inputs: per-feature tensors must all have the same number of rows")
        array = _matrix(np.stack(columns, axis=1), "inputs")
    _check_width(array, names, "inputs")
    if array.shape[0] == 0:
        raise BadRequest("inputs: expected at least one row")
    return array


def _flatten(data: Any, where: str, depth: int = 0) -> list[Any]:
    """Row-major flattening of nested lists of numbers (OIP allows flat or nested data)."""
    if not isinstance(data, list):
        raise BadRequest(f"{where}.data: expected a list")
    if depth > 32:
        raise BadRequest(f"{where}.data: nested too deeply")
    out: list[Any] = []
    for value in data:
        if isinstance(value, list):
            out.extend(_flatten(value, where, depth + 1))
        elif isinstance(value, bool | int | float):
            out.append(value)
        else:
            raise BadRequest(f"{where}.data: expected numbers, got {type(value).__name__}")
    return out


# --- responses -------------------------------------------------------------------------


def _answer(outputs: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    array = np.asarray(outputs, dtype=np.float64)
    if array.ndim not in (1, 2):
        raise ValueError(f"a predictor answers 1-D or 2-D arrays, got shape {array.shape}")
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
