"""The OpenAPI 3.1 document of the control API, built from the resource schemas."""

from __future__ import annotations

from typing import Any

from pilothouse import __version__
from pilothouse.spec.resources import API_VERSION, KINDS
from pilothouse.spec.schema import json_schema

_STATUS = {
    "type": "object",
    "properties": {
        "kind": {"const": "Status"},
        "code": {"type": "integer"},
        "reason": {"type": "string"},
        "message": {"type": "string"},
        "details": {"type": "object"},
    },
}


def _error_responses() -> dict[str, Any]:
    ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Status"}}}}
    return {
        "400": {"description": "Malformed request", **ref},
        "401": {"description": "Missing or wrong token", **ref},
        "404": {"description": "Not found", **ref},
        "409": {"description": "Conflict", **ref},
        "422": {"description": "Invalid resource; nothing applied", **ref},
    }


def openapi_document() -> dict[str, Any]:
    schemas: dict[str, Any] = {"Status": _STATUS}
    paths: dict[str, Any] = {
        "/healthz": {
            "get": {
                "summary": "Liveness of the control plane",
                "security": [],
                "responses": {"200": {"description": "ok"}},
            }
        },
        f"/apis/{API_VERSION}/apply": {
            "post": {
                "summary": "Apply several resources atomically (all or nothing)",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["items"],
                                "properties": {
                                    "items": {
                                        "type": "array",
                                        "minItems": 1,
                                        "items": {"type": "object"},
                                    }
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": {"description": "Applied; result per item"},
                    **_error_responses(),
                },
            }
        },
    }
    for cls in KINDS.values():
        schemas[cls.KIND] = json_schema(cls)
        schemas[cls.KIND].pop("$schema", None)
        obj = {
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{cls.KIND}"}}
            }
        }
        base = f"/apis/{API_VERSION}/{cls.PLURAL}"
        name_param = [
            {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
        ]
        paths[base] = {
            "get": {
                "summary": f"List {cls.PLURAL}",
                "responses": {"200": {"description": f"{cls.KIND}List"}, **_error_responses()},
            }
        }
        paths[f"{base}/{{name}}"] = {
            "parameters": name_param,
            "get": {
                "summary": f"Read a {cls.KIND}",
                "responses": {"200": {"description": cls.KIND, **obj}, **_error_responses()},
            },
            "put": {
                "summary": f"Create or update a {cls.KIND}",
                "requestBody": {"required": True, **obj},
                "responses": {
                    "200": {"description": "Updated or unchanged", **obj},
                    "201": {"description": "Created", **obj},
                    **_error_responses(),
                },
            },
            "delete": {
                "summary": f"Delete a {cls.KIND}",
                "responses": {
                    "202": {"description": "Deletion started", **obj},
                    **_error_responses(),
                },
            },
        }
        paths[f"{base}/{{name}}/events"] = {
            "parameters": name_param,
            "get": {
                "summary": "Events",
                "responses": {"200": {"description": "Events"}, **_error_responses()},
            },
        }
        paths[f"{base}/{{name}}/log"] = {
            "parameters": name_param,
            "get": {
                "summary": "Logs of the object's processes",
                "parameters": [
                    {"name": "follow", "in": "query", "schema": {"type": "boolean"}},
                    {"name": "tail", "in": "query", "schema": {"type": "integer"}},
                ],
                "responses": {"200": {"description": "text/plain log lines"}, **_error_responses()},
            },
        }
    node_param = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
    paths["/api/v1/nodes"] = {
        "get": {
            "summary": "Nodes: capacity, allocated, free, GPUs, what runs on each; what waits",
            "responses": {"200": {"description": "{items: [node], pending: [item]}"}},
        }
    }
    paths["/api/v1/nodes/{name}"] = {
        "parameters": node_param,
        "get": {
            "summary": "One node",
            "responses": {"200": {"description": "The node"}, **_error_responses()},
        },
    }
    paths["/api/v1/nodes/{name}/{action}"] = {
        "parameters": [
            *node_param,
            {
                "name": "action",
                "in": "path",
                "required": True,
                "schema": {"enum": ["cordon", "uncordon", "drain", "fail"]},
            },
        ],
        "post": {
            "summary": "Cordon, uncordon, drain (evict with grace) or fail (lose) a node",
            "responses": {
                "200": {"description": "{node, message, evicted}"},
                **_error_responses(),
            },
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "pilothouse control API", "version": __version__},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": paths,
    }
