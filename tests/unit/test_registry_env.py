"""What a model server gets of the platform's environment to fetch its own model."""

from __future__ import annotations

from pilothouse.runtime.local.env import child_env, registry_env, registry_of

ENV = {
    "PATH": "/usr/bin",
    "AWS_ACCESS_KEY_ID": "AKIA",
    "AWS_SECRET_ACCESS_KEY": "secret",
    "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
    "PILOTHOUSE_REGISTRY_OPTIONS": '{"anon": false}',
    "GITHUB_TOKEN": "ghp",
}


def test_a_folder_registry_needs_nothing() -> None:
    assert registry_env("/home/u/.pilothouse/registry", ENV) == {}
    assert registry_env("file:///srv/models", ENV) == {}


def test_object_storage_gets_its_access_and_nothing_else() -> None:
    got = registry_env("s3://models/prod", ENV)
    assert got == {
        "AWS_ACCESS_KEY_ID": "AKIA",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "PILOTHOUSE_REGISTRY_OPTIONS": '{"anon": false}',
    }


def test_workers_still_get_none_of_it() -> None:
    env = child_env({}, (), ENV)
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "PILOTHOUSE_REGISTRY_OPTIONS"} & set(
        env
    )
    assert "GITHUB_TOKEN" not in env


def test_the_registry_is_read_from_the_server_arguments() -> None:
    args = ["--model", "m:1", "--registry", "s3://b/p", "--cache", "/c"]
    assert registry_of(args) == "s3://b/p"
    assert registry_of(["--model-dir", "/x"]) == ""
