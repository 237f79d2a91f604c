"""OpenAPI document of a replica: OIP v2 and v1 over REST (also what the fuzzer reads)."""

from __future__ import annotations

from typing import Any

from pilothouse.serving.protocol import BINARY_DTYPES

_ERROR = {
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"type": "string"}},
            }
        }
    }
}
_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype", "data"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {
            "type": "string",
            # every OIP datatype; BYTES is documented (and refused with a 400 by this server)
            "enum": [*BINARY_DTYPES, "BYTES"],
        },
        "parameters": {"type": "object"},
        "data": {"type": "array"},
    },
}
_INFER_REQUEST = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object"},
        "inputs": {"type": "array", "items": _TENSOR},
        "outputs": {"type": "array", "items": {"type": "object"}},
    },
}
_INFER_RESPONSE = {
    "type": "object",
    "required": ["model_name", "outputs"],
    "properties": {
        "model_name": {"type": "string"},
        "model_version": {"type": "string"},
        "id": {"type": "string"},
        "outputs": {"type": "array", "items": _TENSOR},
    },
}
_V1_REQUEST = {
    "type": "object",
    "required": ["instances"],
    "properties": {
        "instances": {"type": "array", "items": {"anyOf": [{"type": "array"}, {"type": "object"}]}}
    },
}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    words = {
        400: "Malformed request",
        404: "Unknown model or version",
        413: "Body too large",
        503: "Not ready",
    }
    return {str(c): {"description": words[c], **_ERROR} for c in codes}


def openapi_document(model_name: str) -> dict[str, Any]:
    name = {
        "name": "name",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "example": model_name,
    }
    version = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
    infer = {
        "post": {
            "summary": "OIP v2 inference",
            "requestBody": {"required": True, **_json(_INFER_REQUEST)},
            "responses": {
                "200": {"description": "Scores", **_json(_INFER_RESPONSE)},
                **_errors(400, 404, 413, 503),
            },
        }
    }
    ok = {"200": {"description": "OK", **_json({"type": "object"})}}
    return {
        "openapi": "3.0.3",
        "info": {"title": f"pilothouse model server ({model_name})", "version": "0.1.0"},
        "paths": {
            "/v2/health/live": {"get": {"responses": ok}},
            "/v2/health/ready": {"get": {"responses": {**ok, **_errors(503)}}},
            "/v2": {"get": {"responses": ok}},
            "/v2/models/{name}": {
                "parameters": [name],
                "get": {"responses": {**ok, **_errors(404, 503)}},
            },
            "/v2/models/{name}/ready": {
                "parameters": [name],
                "get": {"responses": {**ok, **_errors(404, 503)}},
            },
            "/v2/models/{name}/versions/{version}": {
                "parameters": [name, version],
                "get": {"responses": {**ok, **_errors(404, 503)}},
            },
            "/v2/models/{name}/infer": {"parameters": [name], **infer},
            "/v2/models/{name}/versions/{version}/infer": {"parameters": [name, version], **infer},
            "/v1/models/{name}:predict": {
                "parameters": [name],
                "post": {
                    "summary": "v1 prediction",
                    "requestBody": {"required": True, **_json(_V1_REQUEST)},
                    "responses": {
                        "200": {
                            "description": "Predictions",
                            **_json({"type": "object", "required": ["predictions"]}),
                        },
                        **_errors(400, 404, 413, 503),
                    },
                },
            },
            "/metrics": {"get": {"responses": {"200": {"description": "Prometheus text format"}}}},
        },
    }
