"""``kvstore.connect()`` and ``kvstore.connect_sync()``: finding the cluster and making a client.

Theory of operation
-------------------
Gateway mode (the default) talks HTTP to a coordinator and needs a URL and an API token. Each is
taken from, in order:

1. the ``url`` / ``token`` arguments;
2. the environment: ``KV_URL`` / ``KV_TOKEN``;
3. the local cluster directory (the ``cluster`` argument, a directory or its ``cluster.toml``;
   else ``$KVSTORE_DIR``; else ``./.kvstore``): the first coordinator of ``cluster.toml``
   (``http://<address>``) and the plaintext admin token in ``admin.token`` beside it, which
   ``kvctl cluster up`` writes with mode 0600.

The token file is read only when the URL also comes from that directory, or when ``cluster`` is
passed explicitly: a URL naming some other server never gets the local admin token. A token file
readable by group or others is refused, as the cluster secret is (a credential anyone on the box
can read protects nothing). When nothing is found, the ``ValidationError`` says what to do.

Direct mode (``direct=True``) embeds the coordinator library: it reads the cluster file (found
as in step 3) and the cluster secret it names, and talks to the storage nodes itself. URL and
token do not apply.

Configuration errors surface here, when connecting, not at the first call; no network call is
made here (connections open on first use).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Final

from kvstore.client.backend import Backend
from kvstore.client.client import Client
from kvstore.client.retry import RetryPolicy
from kvstore.client.sync import SyncClient
from kvstore.config import ClusterConfig, load_cluster
from kvstore.errors import ValidationError
from kvstore.limits import SDK_TIMEOUT_MS_DEFAULT
from kvstore.localcluster import ADMIN_TOKEN_FILE, CLUSTER_FILE, DEFAULT_DIR, DIR_ENV

__all__ = [
    "ENV_URL",
    "ENV_TOKEN",
    "ENV_CLUSTER_DIR",
    "CLUSTER_DIR_DEFAULT",
    "ADMIN_TOKEN_FILE",
    "connect",
    "connect_sync",
]

ENV_URL: Final = "KV_URL"
ENV_TOKEN: Final = "KV_TOKEN"
# The local cluster directory's names, as kvctl makes it (one definition, in kvstore.localcluster).
ENV_CLUSTER_DIR: Final = DIR_ENV
CLUSTER_DIR_DEFAULT: Final = DEFAULT_DIR
_HINT: Final = "set KV_URL and KV_TOKEN, or run `kvctl cluster up`"


def _cluster_paths(cluster: str | os.PathLike[str] | None) -> tuple[Path, Path]:
    """(directory, cluster file) of the local cluster."""
    raw = cluster if cluster is not None else os.environ.get(ENV_CLUSTER_DIR) or CLUSTER_DIR_DEFAULT
    path = Path(raw).expanduser()
    if path.suffix == ".toml":
        return path.parent, path
    return path, path / CLUSTER_FILE


def _load(file: Path) -> ClusterConfig:
    if not file.is_file():
        raise ValidationError("cluster", f"no cluster file at {file}: {_HINT}")
    return load_cluster(file)


def _coordinator_url(config: ClusterConfig) -> str:
    for spec in config.coordinators.values():
        return f"http://{spec.address}"
    raise ValidationError(
        "cluster", f"{config.path} has no coordinators; connect with direct=True or add one"
    )


def _admin_token(directory: Path) -> str:
    path = directory / ADMIN_TOKEN_FILE
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ValidationError("token", f"no token file at {path}: {_HINT}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ValidationError("token", f"cannot read {path}: {error}") from None
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValidationError(
            "token", f"{path} is accessible by group or others; run `chmod 600 {path}`"
        )
    if not text:
        raise ValidationError("token", f"{path} is empty: {_HINT}")
    return text


def _backend(
    url: str | None,
    token: str | None,
    cluster: str | os.PathLike[str] | None,
    *,
    direct: bool,
) -> Backend:
    if direct:
        if url is not None or token is not None:
            raise ValidationError(
                "direct", "url and token are for gateway mode; direct mode uses the cluster file"
            )
        from kvstore.client.direct import DirectBackend  # noqa: PLC0415 - only direct mode pays

        return DirectBackend(_load(_cluster_paths(cluster)[1]))
    url = url if url is not None else os.environ.get(ENV_URL) or None
    token = token if token is not None else os.environ.get(ENV_TOKEN) or None
    if url is None:
        directory, file = _cluster_paths(cluster)
        if not file.is_file():
            raise ValidationError("url", f"no cluster to connect to (no {file}): {_HINT}")
        url = _coordinator_url(_load(file))
        token = token if token is not None else _admin_token(directory)
    elif token is None:
        if cluster is None:
            raise ValidationError("token", f"no token for {url}: pass token= or set KV_TOKEN")
        token = _admin_token(_cluster_paths(cluster)[0])
    from kvstore.client.http import HttpBackend  # noqa: PLC0415 - aiohttp loads on first connect

    return HttpBackend(url, token)


def connect(
    url: str | None = None,
    token: str | None = None,
    *,
    cluster: str | os.PathLike[str] | None = None,
    direct: bool = False,
    timeout_s: float = SDK_TIMEOUT_MS_DEFAULT / 1000,
    retry: RetryPolicy | None = None,
) -> Client:
    """An async client: ``async with kvstore.connect() as kv: ...`` (see the module).

    ``timeout_s`` bounds each call, its retries included; ``retry`` tunes the retry policy.
    """
    return Client(_backend(url, token, cluster, direct=direct), timeout_s=timeout_s, retry=retry)


def connect_sync(
    url: str | None = None,
    token: str | None = None,
    *,
    cluster: str | os.PathLike[str] | None = None,
    direct: bool = False,
    timeout_s: float = SDK_TIMEOUT_MS_DEFAULT / 1000,
    retry: RetryPolicy | None = None,
) -> SyncClient:
    """A blocking client: ``with kvstore.connect_sync() as kv: ...`` (same arguments)."""
    return SyncClient(
        connect(url, token, cluster=cluster, direct=direct, timeout_s=timeout_s, retry=retry)
    )
