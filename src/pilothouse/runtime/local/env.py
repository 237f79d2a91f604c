"""The environment a replica, worker or probe gets: an explicit one (:func:`child_env`).

A process gets what the platform and its spec set, not the control plane's whole
environment: secrets in it (AWS_SECRET_ACCESS_KEY, tokens) stay there unless a spec's
``passEnv`` names them. Its own module because it is a security boundary worth reading
(and testing) on its own.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

#: what every process gets of the control plane's environment: where programs and
#: libraries are (its own Python's bin first on PATH), who and where it runs, its locale,
#: which certificate authorities to trust, thread settings, CUDA settings, and the
#: platform's own PILOTHOUSE_* settings. Proxies are not among them (their URLs may hold
#: credentials): ``passEnv: [HTTPS_PROXY, NO_PROXY]``.
_INHERITED = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "VIRTUAL_ENV",
        "PYTHONPATH",
        "LD_LIBRARY_PATH",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "MKL_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
    }
)
_INHERITED_PREFIXES = ("LC_", "OMP_", "CUDA_", "PILOTHOUSE_")
#: the platform's registry access (a URI, and storage options that may hold credentials):
#: user processes (training workers) never get them unless their spec asks; model servers
#: get what reading their model needs (:func:`registry_env`)
_CONTROL_PLANE_ONLY = frozenset({"PILOTHOUSE_REGISTRY", "PILOTHOUSE_REGISTRY_OPTIONS"})
#: what reading an object-storage registry needs (credentials, region, endpoint, CA)
_OBJECT_STORE_ACCESS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CA_BUNDLE",
    "PILOTHOUSE_REGISTRY_OPTIONS",
)


def registry_of(server_args: list[str]) -> str:
    """The registry URI among a model server's arguments (``--registry URI``)."""
    if "--registry" not in server_args:
        return ""
    return server_args[server_args.index("--registry") + 1]


def registry_env(registry_uri: str, environ: dict[str, str] | None = None) -> dict[str, str]:
    """What a model server needs of the platform's environment to fetch its model itself
    (as a storage initializer gets the registry's secret on Kubernetes): nothing for a
    folder registry (the default); for object storage its credentials, region and
    endpoint. Training workers never get these (their output is registered by the
    platform). Use read-only credentials for a registry replicas read from."""
    if "://" not in registry_uri or registry_uri.startswith("file://"):
        return {}
    source = os.environ if environ is None else environ
    return {name: source[name] for name in _OBJECT_STORE_ACCESS if name in source}


def _passed(name: str, patterns: tuple[str, ...]) -> bool:
    """Whether ``name`` is one of ``patterns`` (names, or prefixes ending in ``*``)."""
    return any(name.startswith(p[:-1]) if p.endswith("*") else name == p for p in patterns)


def child_env(
    extra: dict[str, str],
    pass_env: tuple[str, ...] = (),
    environ: dict[str, str] | None = None,
) -> dict[str, str]:
    """The environment of a replica, worker or probe: an explicit one.

    * from the control plane's environment (``environ``, default ``os.environ``): PATH
      (with the platform's Python first), HOME, USER, LOGNAME, the locale (LANG,
      LANGUAGE, LC_*, TZ), TMPDIR, VIRTUAL_ENV, PYTHONPATH and LD_LIBRARY_PATH (how the
      platform's own Python and libraries are found), the certificate authorities to
      trust (SSL_CERT_FILE, SSL_CERT_DIR, REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE), thread
      settings (OMP_*, MKL_NUM_THREADS, OPENBLAS_NUM_THREADS), CUDA_* and the platform's
      PILOTHOUSE_* settings (its home, a benchmark's run tag) except the registry's
      (PILOTHOUSE_REGISTRY, PILOTHOUSE_REGISTRY_OPTIONS);
    * whatever else of it the spec's ``passEnv`` names (``AWS_PROFILE``, ``AWS_*``);
    * ``PYTHONUNBUFFERED=1``, then ``extra``: the spec's ``env`` and what the platform sets
      (PILOTHOUSE_*, CUDA_VISIBLE_DEVICES, the torchrun variables), which win.

    Nothing else: credentials in the control plane's environment (AWS_SECRET_ACCESS_KEY,
    tokens) do not reach user processes unless a spec passes them. A model server gets
    what fetching its model needs on top (:func:`registry_env`, given in ``extra``); a
    training job's output is registered by the platform. A job that reads its own data
    from S3 names what it needs: ``passEnv: [AWS_*]``.
    """
    source = os.environ if environ is None else environ
    env = {
        name: value
        for name, value in source.items()
        if (
            (name in _INHERITED or name.startswith(_INHERITED_PREFIXES))
            and name not in _CONTROL_PLANE_ONLY
        )
        or _passed(name, pass_env)
    }
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", os.defpath)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env
