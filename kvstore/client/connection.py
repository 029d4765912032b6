"""``kvstore.connect()`` and ``kvstore.connect_sync()``: finding the cluster and making a client.

Theory of operation
-------------------
Three modes (``mode=``), each a :class:`~kvstore.client.backend.Backend`:

* ``"native"``: msgpack RPC straight to the storage node that holds each call's data
  (:mod:`kvstore.client.native`); the node coordinates. Needs the cluster file and the cluster
  secret it names (a local cluster's directory has both). The fastest mode.
* ``"gateway"``: the public HTTP JSON API of any node or coordinator; needs a URL and an API
  token.
* ``"direct"``: an embedded coordinator library talking to the storage nodes itself
  (``direct=True`` is the same); needs the cluster file and secret.

Without ``mode``: gateway when a URL is given (the ``url`` argument or ``KV_URL``) or a
``token`` argument is, else native when a cluster file is found (below), else a
``ValidationError`` saying what to do.

The cluster file is found from the ``cluster`` argument (a directory or its ``cluster.toml``),
else ``$KVSTORE_DIR``, else ``./.kvstore``. Gateway mode takes the URL and the token from, in
order:

1. the ``url`` / ``token`` arguments;
2. the environment: ``KV_URL`` / ``KV_TOKEN``;
3. the local cluster directory: the first coordinator of ``cluster.toml``, else its first node
   (every node serves the API) as ``http://<address>``, and the plaintext admin token in
   ``admin.token`` beside it, which ``kvctl cluster up`` writes with mode 0600.

The token file is read only when the URL also comes from that directory, or when ``cluster`` is
passed explicitly: a URL naming some other server never gets the local admin token. A token file
readable by group or others is refused, as the cluster secret is (a credential anyone on the box
can read protects nothing). When nothing is found, the ``ValidationError`` says what to do.

Configuration errors surface here, when connecting, not at the first call; no network call is
made here (connections open on first use).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Final, Literal

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
    "Mode",
    "MODES",
    "connect",
    "connect_sync",
]

ENV_URL: Final = "KV_URL"
ENV_TOKEN: Final = "KV_TOKEN"
# The local cluster directory's names, as kvctl makes it (one definition, in kvstore.localcluster).
ENV_CLUSTER_DIR: Final = DIR_ENV
CLUSTER_DIR_DEFAULT: Final = DEFAULT_DIR
_HINT: Final = "set KV_URL and KV_TOKEN, or run `kvctl cluster up`"
Mode = Literal["native", "gateway", "direct"]
MODES: Final[tuple[Mode, ...]] = ("native", "gateway", "direct")


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


def _api_url(config: ClusterConfig) -> str:
    """The first coordinator's API, else the first node's (every node serves the API)."""
    addresses = [spec.address for spec in config.coordinators.values()]
    addresses += [spec.address for spec in config.nodes.values()]
    for address in addresses:
        return f"http://{address}"
    raise ValidationError("cluster", f"{config.path} names no node and no coordinator")


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


def _mode(url: str | None, token: str | None, mode: Mode | None, direct: bool) -> Mode:
    if direct:
        if mode not in (None, "direct"):
            raise ValidationError("direct", f"direct=True contradicts mode={mode!r}")
        mode = "direct"
    if mode is None:
        given_url = url is not None or bool(os.environ.get(ENV_URL))
        return "gateway" if given_url or token is not None else "native"
    if mode not in MODES:
        raise ValidationError("mode", f"must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def _backend(
    url: str | None,
    token: str | None,
    cluster: str | os.PathLike[str] | None,
    *,
    mode: Mode | None,
    direct: bool,
) -> Backend:
    chosen = _mode(url, token, mode, direct)
    if chosen != "gateway":
        if url is not None or token is not None:
            raise ValidationError(
                chosen,
                f"url and token are for gateway mode; {chosen} mode uses the cluster file",
            )
        file = _cluster_paths(cluster)[1]
        if chosen == "direct":
            from kvstore.client.direct import DirectBackend  # noqa: PLC0415 - only direct pays

            return DirectBackend(_load(file))
        if not file.is_file():
            raise ValidationError("url", f"no cluster to connect to (no {file}): {_HINT}")
        from kvstore.client.native import NativeBackend  # noqa: PLC0415 - loads on first connect

        return NativeBackend(_load(file))
    url = url if url is not None else os.environ.get(ENV_URL) or None
    token = token if token is not None else os.environ.get(ENV_TOKEN) or None
    if url is None:
        directory, file = _cluster_paths(cluster)
        if not file.is_file():
            raise ValidationError("url", f"no cluster to connect to (no {file}): {_HINT}")
        url = _api_url(_load(file))
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
    mode: Mode | None = None,
    direct: bool = False,
    timeout_s: float = SDK_TIMEOUT_MS_DEFAULT / 1000,
    retry: RetryPolicy | None = None,
) -> Client:
    """An async client: ``async with kvstore.connect() as kv: ...`` (see the module).

    ``mode`` is ``"native"``, ``"gateway"`` or ``"direct"`` (default: see the module);
    ``timeout_s`` bounds each call, its retries included; ``retry`` tunes the retry policy.
    """
    backend = _backend(url, token, cluster, mode=mode, direct=direct)
    return Client(backend, timeout_s=timeout_s, retry=retry)


def connect_sync(
    url: str | None = None,
    token: str | None = None,
    *,
    cluster: str | os.PathLike[str] | None = None,
    mode: Mode | None = None,
    direct: bool = False,
    timeout_s: float = SDK_TIMEOUT_MS_DEFAULT / 1000,
    retry: RetryPolicy | None = None,
) -> SyncClient:
    """A blocking client: ``with kvstore.connect_sync() as kv: ...`` (same arguments)."""
    return SyncClient(
        connect(
            url,
            token,
            cluster=cluster,
            mode=mode,
            direct=direct,
            timeout_s=timeout_s,
            retry=retry,
        )
    )
