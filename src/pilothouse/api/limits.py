"""What a request body may be: at most ``MAX_BODY`` bytes of UTF-8 JSON, an object at
the top, no deeper than ``MAX_JSON_DEPTH``, integers within 64 bits, valid Unicode.

Every endpoint that takes a body reads it through ``read_json`` (or ``read_body`` and
``parse_json_object``), so anything else is one 400 ``Status`` naming what was expected,
never a 500 and never a half-applied change. Kept apart from the handlers because the
rules are the same for all of them and are tested directly.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from pilothouse.api.errors import ApiError

MAX_BODY = 4 * 2**20
#: request bodies nested deeper than this are refused (validation and storage recurse)
MAX_JSON_DEPTH = 100
#: integers must fit in 64 bits (SQLite, Kubernetes and most clients stop there); the
#: stdlib parser is used with this check because orjson turns larger ones into floats
MAX_JSON_NUMBER = 2**63


async def read_body(request: Request) -> bytes:
    """The request body, refused once it exceeds ``MAX_BODY`` (never held beyond that)."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > MAX_BODY:
        raise _too_large()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise _too_large()
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large() -> ApiError:
    return ApiError(413, "RequestEntityTooLarge", f"request body larger than {MAX_BODY} bytes")


async def read_json(request: Request, expected: str) -> dict[str, Any]:
    """The request body as a JSON object (see ``parse_json_object``)."""
    return parse_json_object(await read_body(request), expected)


def parse_json_object(body: bytes, expected: str) -> dict[str, Any]:
    """Parse a request body that must be a JSON object; ``ApiError`` 400 naming what was
    expected for anything else: not UTF-8, not JSON, NaN or Infinity, an integer beyond
    64 bits, nested deeper than ``MAX_JSON_DEPTH``, text that is not valid Unicode (lone
    surrogates), another top-level type."""
    data = _loads(_decode(body, expected), expected)
    unusable = json_problem(data)
    if unusable is not None:
        raise ApiError(400, "BadRequest", f"request body: {unusable}; expected {expected}")
    if not isinstance(data, dict):
        raise ApiError(
            400,
            "BadRequest",
            f"request body is a JSON {_json_type(data)}; expected {expected} (a JSON object)",
        )
    return data


def _decode(body: bytes, expected: str) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(
            400,
            "BadRequest",
            f"request body is not UTF-8 text (byte 0x{body[exc.start]:02x} at offset "
            f"{exc.start}); expected {expected} as JSON",
        ) from exc


def _loads(text: str, expected: str) -> Any:
    try:
        return json.loads(text, parse_int=_checked_int, parse_constant=_no_constant)
    except RecursionError as exc:
        raise ApiError(
            400,
            "BadRequest",
            f"request body is nested deeper than {MAX_JSON_DEPTH} levels; expected {expected}",
        ) from exc
    except _NumberTooLarge as exc:
        raise ApiError(400, "BadRequest", f"request body: {exc}; expected {expected}") from exc
    except ValueError as exc:  # JSONDecodeError, NaN, integers beyond the digit limit
        raise ApiError(
            400, "BadRequest", f"request body is not valid JSON: {exc}; expected {expected}"
        ) from exc


class _NumberTooLarge(ValueError):
    pass


def _checked_int(text: str) -> int:
    """JSON integers must fit in 64 bits: refused while parsing, before any big-number
    arithmetic (a 4 MiB integer would otherwise be converted, or silently become a float
    with orjson)."""
    digits = text.removeprefix("-")
    if len(digits) > 19 or not -MAX_JSON_NUMBER <= (value := int(text)) < MAX_JSON_NUMBER:
        shown = text if len(text) <= 24 else f"{text[:12]}…({len(digits)} digits)"
        raise _NumberTooLarge(
            f"integer {shown} is too large; expected an integer between -2^63 and 2^63-1"
        )
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number; expected a finite number")


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return "null" if value is None else type(value).__name__


def json_problem(data: Any) -> str | None:
    """What makes parsed JSON unusable here, or None: nesting deeper than
    ``MAX_JSON_DEPTH``, an integer beyond 64 bits, text with lone surrogates (``"\\ud800"``
    parses, but can never be stored or sent back as UTF-8).

    Iterative, so a document near the parser's own depth limit cannot exhaust the stack.
    """
    stack: list[tuple[Any, int, str]] = [(data, 1, "")]
    while stack:
        value, depth, path = stack.pop()
        if isinstance(value, dict | list):
            problem = _container_problem(value, depth, path, stack)
        else:
            problem = _scalar_problem(value, path or "the top level")
        if problem is not None:
            return problem
    return None


def _container_problem(
    value: dict[Any, Any] | list[Any], depth: int, path: str, stack: list[tuple[Any, int, str]]
) -> str | None:
    """A problem of an object or array itself (too deep, a key that is not valid Unicode),
    or None with its items pushed onto ``stack``."""
    where = path or "the top level"
    if depth > MAX_JSON_DEPTH:
        return (
            f"nested deeper than {MAX_JSON_DEPTH} levels (at {where}); expected at "
            f"most {MAX_JSON_DEPTH} levels of objects and arrays"
        )
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        if isinstance(key, str) and _not_unicode(key):
            return f"{where}: a key holds text that is not valid Unicode"
        child = f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else key
        stack.append((item, depth + 1, child))
    return None


def _scalar_problem(value: Any, where: str) -> str | None:
    if isinstance(value, str):
        if _not_unicode(value):
            return f"{where}: text that is not valid Unicode (a lone surrogate)"
    elif (
        isinstance(value, int)
        and not isinstance(value, bool)
        and not -MAX_JSON_NUMBER <= value < MAX_JSON_NUMBER
    ):
        return f"{where}: integer {value} is too large; expected 64-bit integers"
    return None


def _not_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
