"""Read multi-document YAML from files, folders and stdin, and validate all of it.

Every error in every document is reported at once, each naming the file, the
document, the line, the field path, the bad value and what was expected; the
caller applies nothing unless the whole input is valid (all-or-nothing, like
``kubectl apply`` with a server-side dry run first).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from pilothouse.spec.resources import API_VERSION, GROUP, KINDS, Resource

_YAML_SUFFIXES = (".yaml", ".yml", ".json")

#: nodes a document may reach through aliases, each counted every time an alias brings it
#: in (a "billion laughs" document expands nine aliases nine levels deep: 10**9 nodes)
MAX_ALIAS_EXPANSIONS = 5000
#: collections nested deeper than this are refused (composing and validating recurse)
MAX_YAML_DEPTH = 100


class YamlLimitError(yaml.MarkedYAMLError):
    """A document over the alias-expansion or nesting limit; a ``MarkedYAMLError``, so
    every handler of YAML syntax errors reports it with its file and line."""

    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(problem=problem, problem_mark=mark)


class LimitedSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses alias bombs, recursive aliases and deep nesting
    while composing, before anything walks the (otherwise exponential) node graph."""

    def __init__(self, stream: str | bytes) -> None:
        super().__init__(stream)
        #: id(node) -> nodes in its subtree, aliases expanded (for nodes fully composed)
        self._sizes: dict[int, int] = {}
        self._expanded = 0
        self._depth = 0

    def compose_document(self) -> yaml.Node | None:
        self._sizes = {}
        node: yaml.Node | None = super().compose_document()
        return node

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event: Any = self.peek_event()  # type: ignore[no-untyped-call]  # untyped in the stubs
        if isinstance(event, yaml.AliasEvent):
            node: yaml.Node | None = super().compose_node(parent, index)
            size = self._sizes.get(id(node))
            if size is None:
                raise YamlLimitError(
                    f"alias *{event.anchor} refers to a node that contains it (recursive "
                    "aliases are not supported)",
                    event.start_mark,
                )
            self._expanded += size
            if self._expanded > MAX_ALIAS_EXPANSIONS:
                raise YamlLimitError(
                    f"aliases expand to more than {MAX_ALIAS_EXPANSIONS} nodes (at *{event.anchor}); "
                    "refusing a document that grows through aliases (a 'billion laughs' bomb?)",
                    event.start_mark,
                )
            return node
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise YamlLimitError(
                    f"nested deeper than {MAX_YAML_DEPTH} levels; expected at most "
                    f"{MAX_YAML_DEPTH} levels of mappings and lists",
                    event.start_mark,
                )
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if node is not None:
            self._sizes[id(node)] = 1 + sum(self._sizes.get(id(c), 1) for c in _children(node))
        return node


def _children(node: yaml.Node) -> Iterator[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            yield key
            yield value
    elif isinstance(node, yaml.SequenceNode):
        yield from node.value


def safe_load(text: str | bytes) -> Any:
    """``yaml.safe_load`` with the alias-expansion and nesting limits of ``apply -f``.

    For YAML read from users outside ``load_text`` (the nodes file): raises
    ``YamlLimitError`` (a ``yaml.MarkedYAMLError``, with the line) like any syntax error.
    """
    loader = LimitedSafeLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


@dataclass(frozen=True)
class SpecError:
    """One problem in one document."""

    source: str
    document: int
    path: str
    message: str
    line: int | None = None
    value: Any = None
    has_value: bool = False

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        shown = self.has_value and not isinstance(self.value, dict | list)
        got = f" (got {self.value!r})" if shown and "got " not in self.message else ""
        field_part = f"{self.path}: " if self.path else ""
        return f"{where}: document {self.document}: {field_part}{self.message}{got}"

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "source": self.source,
            "document": self.document,
            "line": self.line,
            "field": self.path,
            "message": self.message,
        }
        if self.has_value:
            out["value"] = self.value
        return out


@dataclass
class LoadResult:
    resources: list[Resource] = field(default_factory=list)
    errors: list[SpecError] = field(default_factory=list)
    #: where each resource came from: (source, document number)
    origins: list[tuple[str, int]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


class SpecValidationError(Exception):
    """Raised with every error found; nothing may be applied."""

    def __init__(self, errors: list[SpecError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


def _format_path(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _allowed_fields(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The aliases allowed at the parent of ``loc``, for 'did you mean' suggestions."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or current is None:
            continue
        fields = {info.alias or name: info for name, info in current.model_fields.items()}
        info = fields.get(part)
        if info is None:
            return []
        current = _model_in(info.annotation)
    if current is None:
        return []
    return [info.alias or name for name, info in current.model_fields.items()]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _message(error: Any, model: type[BaseModel]) -> str:
    kind = error["type"]
    loc = tuple(error["loc"])
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        allowed = _allowed_fields(model, loc)
        name = str(loc[-1]) if loc else ""
        close = difflib.get_close_matches(name, allowed, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"unknown field{hint}; expected one of: {', '.join(allowed)}"
    msg = str(error["msg"])
    msg = msg.removeprefix("Value error, ")
    if msg.startswith("Input should be"):
        msg = "expected" + msg.removeprefix("Input should be")
    return msg


def _line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """1-based line of the deepest YAML node on ``loc`` (the key itself for unknown fields)."""
    if node is None:
        return None
    best = node.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            for key, value in node.value:
                if getattr(key, "value", None) == part:
                    best = key.start_mark.line + 1
                    node = value
                    break
            else:
                return best
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return best
            node = node.value[part]
            best = node.start_mark.line + 1
        else:
            return best
    return best


def validate_document(
    data: Any, source: str, document: int, node: yaml.Node | None = None
) -> tuple[Resource | None, list[SpecError]]:
    """Validate one parsed document; returns the resource or every error found in it."""

    def err(path: str, message: str, loc: tuple[int | str, ...] = (), **value: Any) -> SpecError:
        return SpecError(
            source=source,
            document=document,
            path=path,
            message=message,
            line=_line_of(node, loc),
            value=value.get("value"),
            has_value="value" in value,
        )

    if not isinstance(data, dict):
        return None, [
            err(
                "",
                "expected a mapping with apiVersion, kind, metadata, spec; "
                f"got {type(data).__name__}",
            )
        ]
    errors: list[SpecError] = []
    api_version = data.get("apiVersion")
    if api_version is None:
        errors.append(err("apiVersion", f"required field is missing; expected '{API_VERSION}'"))
    elif api_version != API_VERSION:
        hint = (
            f"version not served; expected '{API_VERSION}'"
            if isinstance(api_version, str) and api_version.startswith(GROUP + "/")
            else f"expected '{API_VERSION}'"
        )
        errors.append(err("apiVersion", hint, ("apiVersion",), value=api_version))
    kind = data.get("kind")
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if kind is None:
        errors.append(
            err("kind", f"required field is missing; expected one of: {', '.join(KINDS)}")
        )
    elif cls is None:
        close = difflib.get_close_matches(str(kind), list(KINDS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        errors.append(
            err(
                "kind",
                f"unknown kind{hint}; expected one of: {', '.join(KINDS)}",
                ("kind",),
                value=kind,
            )
        )
    if cls is None:
        return None, errors
    try:
        resource = cls.model_validate(data)
    except ValidationError as exc:
        for e in exc.errors(include_url=False):
            loc = tuple(e["loc"])
            if loc == ("apiVersion",):
                continue  # already reported above with a better message
            has_value = e["type"] != "missing" and "input" in e
            errors.append(
                err(
                    _format_path(loc),
                    _message(e, cls),
                    loc,
                    **({"value": _plain(e["input"])} if has_value else {}),
                )
            )
        errors.sort(key=lambda e: e.line or 0)
        return None, errors
    if errors:
        return None, errors
    return resource, []


def _plain(value: Any) -> Any:
    """Keep reported values short and JSON-friendly (no NaN, no huge integers)."""
    if isinstance(value, dict):
        return {str(k): "…" for k in list(value)[:5]}
    if isinstance(value, list):
        return [_plain(v) for v in value[:5]]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**63:
        return "<a very large integer>"
    if isinstance(value, str) and len(value) > 200:
        return value[:200] + "…"
    return value


def iter_documents(
    text: str, source: str
) -> Iterator[tuple[int, yaml.Node | None, Any, SpecError | None]]:
    """Yield (document number, node, data, syntax error) for every document in ``text``."""
    loader = LimitedSafeLoader(text)
    number = 0
    try:
        while True:
            try:
                if not loader.check_node():
                    return
                number += 1
                node = loader.get_node()
                data = loader.construct_document(node)
            except yaml.MarkedYAMLError as exc:
                mark = exc.problem_mark or exc.context_mark
                line = mark.line + 1 if mark else None
                problem = exc.problem or "invalid YAML"
                yield (
                    number or 1,
                    None,
                    None,
                    SpecError(
                        source=source,
                        document=number or 1,
                        path="",
                        message=f"invalid YAML: {problem}",
                        line=line,
                    ),
                )
                return
            except yaml.YAMLError as exc:
                yield (
                    number or 1,
                    None,
                    None,
                    SpecError(
                        source=source, document=number or 1, path="", message=f"invalid YAML: {exc}"
                    ),
                )
                return
            if data is None:
                continue
            yield number, node, data, None
    finally:
        loader.dispose()


def _duplicate_keys(node: yaml.Node | None, path: str = "") -> list[tuple[str, str, int]]:
    """Keys given twice in one mapping (YAML keeps the last silently: a wrong model could
    ship): (field path, message, line) for each repeat."""
    found: list[tuple[str, str, int]] = []
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            child = f"{path}.{key}" if path else key
            line = key_node.start_mark.line + 1
            if key in first:
                found.append((child, f"duplicate key (first at line {first[key]})", line))
            else:
                first[key] = line
            found.extend(_duplicate_keys(value_node, child))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            found.extend(_duplicate_keys(item, f"{path}[{index}]"))
    return found


def load_text(text: str, source: str, result: LoadResult | None = None) -> LoadResult:
    result = result or LoadResult()
    for number, node, data, syntax in iter_documents(text, source):
        if syntax is not None:
            result.errors.append(syntax)
            continue
        duplicates = _duplicate_keys(node)
        if duplicates:
            result.errors.extend(
                SpecError(source, number, path, message, line) for path, message, line in duplicates
            )
            continue
        kind = data.get("kind") if isinstance(data, dict) else None
        if isinstance(kind, str) and kind.endswith("List") and "items" in data:
            items = data["items"]
            if not isinstance(items, list):
                result.errors.append(
                    SpecError(source, number, "items", "expected a list of resources")
                )
                continue
            for item in items:
                resource, errors = validate_document(item, source, number, None)
                _collect(result, resource, errors, source, number)
            continue
        resource, errors = validate_document(data, source, number, node)
        _collect(result, resource, errors, source, number)
    return result


def _collect(
    result: LoadResult,
    resource: Resource | None,
    errors: list[SpecError],
    source: str,
    number: int,
) -> None:
    result.errors.extend(errors)
    if resource is None:
        return
    for other, (other_source, other_doc) in zip(result.resources, result.origins, strict=True):
        if other.key() == resource.key():
            result.errors.append(
                SpecError(
                    source=source,
                    document=number,
                    path="metadata.name",
                    message=f"duplicate {resource.KIND} '{resource.metadata.name}', "
                    f"already declared in {other_source} document {other_doc}",
                )
            )
            return
    result.resources.append(resource)
    result.origins.append((source, number))


def expand_paths(paths: Iterable[str]) -> list[Path | None]:
    """Files as given, folders expanded to their YAML/JSON files (sorted), '-' as stdin (None)."""
    out: list[Path | None] = []
    for raw in paths:
        if raw == "-":
            out.append(None)
            continue
        path = Path(raw)
        if path.is_dir():
            out.extend(
                sorted(p for p in path.rglob("*") if p.suffix in _YAML_SUFFIXES and p.is_file())
            )
        else:
            out.append(path)
    return out


def load_paths(paths: Iterable[str], stdin_text: str | None = None) -> LoadResult:
    """Load and validate every document under ``paths``; read errors become SpecErrors too."""
    result = LoadResult()
    for path in expand_paths(paths):
        if path is None:
            load_text(stdin_text or "", "<stdin>", result)
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            result.errors.append(
                SpecError(
                    source=str(path), document=0, path="", message=f"cannot read: {exc.strerror}"
                )
            )
            continue
        except UnicodeDecodeError:
            result.errors.append(
                SpecError(source=str(path), document=0, path="", message="not UTF-8 text")
            )
            continue
        load_text(text, str(path), result)
    if not result.resources and not result.errors:
        result.errors.append(
            SpecError(
                source=", ".join(paths) or "<none>",
                document=0,
                path="",
                message="no resources found",
            )
        )
    return result
