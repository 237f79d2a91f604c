"""``load_paths``: files, folders, stdin, unreadable and empty inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pilothouse.spec.loader import expand_paths, load_paths
from pilothouse.spec.resources import API_VERSION


def queue(name: str) -> str:
    return f"apiVersion: {API_VERSION}\nkind: Queue\nmetadata:\n  name: {name}\n"


def names(paths: list[str], stdin_text: str | None = None) -> list[str]:
    result = load_paths(paths, stdin_text=stdin_text)
    assert result.ok, [str(e) for e in result.errors]
    return [r.metadata.name for r in result.resources]


def test_single_file(tmp_path: Path) -> None:
    path = tmp_path / "q.yaml"
    path.write_text(queue("a") + "---\n" + queue("b"), encoding="utf-8")
    result = load_paths([str(path)])
    assert result.ok
    assert [r.metadata.name for r in result.resources] == ["a", "b"]
    assert result.origins == [(str(path), 1), (str(path), 2)]


def test_several_files_in_argument_order(tmp_path: Path) -> None:
    (tmp_path / "z.yaml").write_text(queue("z"), encoding="utf-8")
    (tmp_path / "a.yaml").write_text(queue("a"), encoding="utf-8")
    assert names([str(tmp_path / "z.yaml"), str(tmp_path / "a.yaml")]) == ["z", "a"]


def test_file_with_any_suffix_is_read_when_named(tmp_path: Path) -> None:
    path = tmp_path / "queue.txt"
    path.write_text(queue("txt"), encoding="utf-8")
    assert names([str(path)]) == ["txt"]


def test_folder_recurses_sorted_and_filters_suffixes(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text(queue("b"), encoding="utf-8")
    (tmp_path / "a.yml").write_text(queue("a"), encoding="utf-8")
    (tmp_path / "c.json").write_text(
        json.dumps({"apiVersion": API_VERSION, "kind": "Queue", "metadata": {"name": "c"}}),
        encoding="utf-8",
    )
    (tmp_path / "notes.txt").write_text(queue("txt"), encoding="utf-8")
    (tmp_path / "README.md").write_text("# not a spec\n", encoding="utf-8")
    (tmp_path / "backup.yaml.bak").write_text(queue("bak"), encoding="utf-8")
    nested = tmp_path / "sub" / "deeper"
    nested.mkdir(parents=True)
    (tmp_path / "sub" / "d.yaml").write_text(queue("d"), encoding="utf-8")
    (nested / "e.yaml").write_text(queue("e"), encoding="utf-8")
    # a folder whose name looks like a YAML file is not read as one
    (tmp_path / "fake.yaml").mkdir()
    (tmp_path / "fake.yaml" / "f.yml").write_text(queue("f"), encoding="utf-8")

    expanded = expand_paths([str(tmp_path)])
    assert expanded == sorted(expanded)
    assert all(p is not None and p.is_file() for p in expanded)
    assert {p.name for p in expanded if p is not None} == {
        "a.yml",
        "b.yaml",
        "c.json",
        "d.yaml",
        "e.yaml",
        "f.yml",
    }
    loaded = names([str(tmp_path)])
    assert sorted(loaded) == ["a", "b", "c", "d", "e", "f"]
    assert loaded == [p.stem for p in expanded if p is not None]


def test_folder_order_is_sorted_not_creation_order(tmp_path: Path) -> None:
    for name in ["c", "a", "b"]:
        (tmp_path / f"{name}.yaml").write_text(queue(name), encoding="utf-8")
    assert names([str(tmp_path)]) == ["a", "b", "c"]


def test_stdin_dash(tmp_path: Path) -> None:
    result = load_paths(["-"], stdin_text=queue("from-stdin"))
    assert result.ok
    assert [r.metadata.name for r in result.resources] == ["from-stdin"]
    assert result.origins == [("<stdin>", 1)]


def test_stdin_mixed_with_files(tmp_path: Path) -> None:
    (tmp_path / "f.yaml").write_text(queue("file"), encoding="utf-8")
    assert names([str(tmp_path / "f.yaml"), "-"], stdin_text=queue("stdin")) == ["file", "stdin"]


def test_stdin_errors_name_stdin() -> None:
    result = load_paths(["-"], stdin_text="kind: Queue\nmetadata: {name: q}\n")
    assert not result.ok
    assert [e.source for e in result.errors] == ["<stdin>"]
    assert str(result.errors[0]).startswith("<stdin>")


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    result = load_paths([str(missing)])
    assert not result.ok
    [error] = result.errors
    assert error.source == str(missing)
    assert "cannot read" in error.message
    assert "cannot read" in str(error)


def test_missing_file_does_not_hide_other_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(queue("good"), encoding="utf-8")
    bad = tmp_path / "bad.yaml"
    bad.write_text(queue("Bad_Name"), encoding="utf-8")
    result = load_paths([str(tmp_path / "missing.yaml"), str(good), str(bad)])
    assert not result.ok
    assert [e.source for e in result.errors] == [str(tmp_path / "missing.yaml"), str(bad)]
    assert [r.metadata.name for r in result.resources] == ["good"]


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"kind: Queue\nmetadata: {name: \xe9}\n")
    result = load_paths([str(path)])
    [error] = result.errors
    assert error.source == str(path)
    assert "UTF-8" in error.message


@pytest.mark.parametrize("content", ["", "\n", "# just a comment\n", "---\n---\n"])
def test_empty_file_is_no_resources_found(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text(content, encoding="utf-8")
    result = load_paths([str(path)])
    assert not result.ok
    [error] = result.errors
    assert "no resources found" in error.message
    assert str(path) in error.source


def test_empty_folder_is_no_resources_found(tmp_path: Path) -> None:
    result = load_paths([str(tmp_path)])
    [error] = result.errors
    assert error.message == "no resources found"


def test_empty_stdin_is_no_resources_found() -> None:
    for stdin_text in ("", None):
        result = load_paths(["-"], stdin_text=stdin_text)
        [error] = result.errors
        assert error.message == "no resources found"


def test_no_paths_is_no_resources_found() -> None:
    result = load_paths([])
    [error] = result.errors
    assert error.message == "no resources found"
    assert error.source == "<none>"


def test_duplicates_across_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(queue("same"), encoding="utf-8")
    (tmp_path / "b.yaml").write_text(queue("same"), encoding="utf-8")
    result = load_paths([str(tmp_path)])
    assert not result.ok
    [error] = result.errors
    assert error.source == str(tmp_path / "b.yaml")
    assert "duplicate Queue 'same'" in error.message
    assert str(tmp_path / "a.yaml") in error.message


def test_errors_from_several_files_reported_together(tmp_path: Path) -> None:
    (tmp_path / "1.yaml").write_text(queue("Bad1"), encoding="utf-8")
    (tmp_path / "2.yaml").write_text(queue("ok"), encoding="utf-8")
    (tmp_path / "3.yaml").write_text("kind: [\n", encoding="utf-8")
    result = load_paths([str(tmp_path)])
    assert not result.ok
    assert [Path(e.source).name for e in result.errors] == ["1.yaml", "3.yaml"]
    assert "invalid YAML" in result.errors[1].message
