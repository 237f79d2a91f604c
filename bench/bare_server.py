"""The floor: the least a Python web server can do to serve the fraud model.

One uvicorn process with the same settings as a pilothouse replica (log level
warning, no access log), one Starlette route that parses the JSON body, calls
``predict_proba`` inline on the event loop and returns ``{"predictions": [...]}``.
No validation, no metrics, no batching, no thread hop.

    .venv/bin/python bench/bare_server.py --model PATH/model.joblib --port 8001

Endpoints: ``POST /v1/models/{name}:predict`` (``{"instances": [[10 floats], ...]}``)
and ``GET /v2/health/ready``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


def create_app(model: Any) -> Starlette:
    async def predict(request: Request) -> Response:
        body = await request.json()
        rows = np.asarray(body["instances"], dtype=np.float64)
        scores = model.predict_proba(rows)[:, 1]
        return JSONResponse({"predictions": [float(s) for s in scores]})

    async def ready(_: Request) -> Response:
        return JSONResponse({"ready": True})

    return Starlette(
        routes=[
            Route("/v1/models/{name}:predict", predict, methods=["POST"]),
            Route("/v2/health/ready", ready),
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a joblib-saved estimator")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    app = create_app(joblib.load(args.model))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
