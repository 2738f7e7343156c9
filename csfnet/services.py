"""Fail fast on services: probe MLflow, an Optuna (SQL) database and S3 with short timeouts before a stage works.

Client libraries retry for minutes before they give up (MLflow's HTTP client backs off up to about two minutes);
a probe answers within ``services.timeout`` seconds with a :class:`~csfnet.errors.ServiceError` that names the
service and its URI, credentials masked.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from csfnet.errors import ServiceError

_SECRET_QUERY = re.compile(r"(?i)((?:password|passwd|pwd|token|secret|key|signature|credential)[^=&]*=)[^&]*")


def mask(uri: str) -> str:
    """``uri`` with the password of ``user:password@`` and secret-looking query values replaced by ``***``."""
    masked = re.sub(r"(?<=://)([^/@:]*):([^/@]*)@", r"\1:***@", uri)
    return _SECRET_QUERY.sub(r"\1***", masked)


def probe_tracking(uri: str, timeout: float) -> None:
    """The MLflow tracking store at ``uri`` answers: an HTTP server's ``/health``, a database connection, or a
    writable folder for a local SQLite file."""
    scheme = urlsplit(uri).scheme.split("+")[0]
    if scheme in ("http", "https"):
        _probe_http(uri.rstrip("/") + "/health", f"MLflow tracking server {mask(uri)}", timeout)
    elif scheme == "sqlite":
        _probe_sqlite(uri, "MLflow tracking store")
    elif scheme in ("postgresql", "mysql", "mssql"):
        probe_database(uri, timeout, "MLflow tracking database")


def probe_database(url: str, timeout: float, what: str = "database") -> None:
    """A SQLAlchemy URL accepts a connection within ``timeout`` seconds."""
    scheme = urlsplit(url).scheme.split("+")[0]
    if scheme == "sqlite":
        _probe_sqlite(url, what)
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import SQLAlchemyError

    connect_args = {"connect_timeout": max(int(timeout), 1)} if scheme in ("postgresql", "mysql") else {}
    try:
        engine = create_engine(url, connect_args=connect_args, poolclass=_null_pool())
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
    except (SQLAlchemyError, ImportError) as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise ServiceError(f"{what} {mask(url)} is unreachable: {mask(reason)}") from None


def probe_s3(uri: str, timeout: float) -> None:
    """The bucket of ``s3://bucket/...`` answers at ``$AWS_ENDPOINT_URL`` (or AWS) within ``timeout`` seconds."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    bucket = urlsplit(uri).netloc
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    where = f"{uri} (endpoint {endpoint})" if endpoint else uri
    config = Config(connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 1, "mode": "standard"})
    try:
        boto3.client("s3", endpoint_url=endpoint, config=config).head_bucket(Bucket=bucket)
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "error")
        reason = {"404": "no such bucket", "403": "access denied (check AWS credentials)"}.get(code, code)
        raise ServiceError(f"S3 {mask(where)}: {reason}") from None
    except BotoCoreError as e:
        raise ServiceError(f"S3 {mask(where)} is unreachable: {mask(str(e))}") from None


def _probe_http(url: str, what: str, timeout: float) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            response.read(64)
    except urllib.error.HTTPError as e:
        if e.code >= 500:
            raise ServiceError(f"{what} answered HTTP {e.code}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ServiceError(f"{what} is unreachable: {reason} (waited at most {timeout:g} s)") from None


def _probe_sqlite(url: str, what: str) -> None:
    path = url.split(":///", 1)[-1]
    if path in ("", ":memory:"):
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise ServiceError(f"{what} {url}: folder {folder} does not exist or is not writable")


def _null_pool():
    from sqlalchemy.pool import NullPool

    return NullPool
