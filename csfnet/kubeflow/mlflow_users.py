"""The MLflow users of a basic-auth tracking server: the pipeline's (registers models, moves the champion alias) and
serving's (read-only: downloads the champion). Run by Job ``mlflow-users`` in ``infra/k8s``:
``python -m csfnet.kubeflow.mlflow_users`` with the variables of :data:`ENV`.

The server's ``default_permission = READ`` lets every authenticated user read; only a resource's creator (the
pipeline's user, for the experiment and the registered models) and the admin may change it; anonymous requests are
refused.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping

from csfnet.errors import ServiceError, SettingsError

ENV = {
    "admin": ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD"),
    "pipeline": ("CSFNET_PIPELINE_USERNAME", "CSFNET_PIPELINE_PASSWORD"),
    "serving": ("CSFNET_SERVING_USERNAME", "CSFNET_SERVING_PASSWORD"),
}


@contextlib.contextmanager
def _credentials(username: str, password: str) -> Iterator[None]:
    """MLflow's clients read credentials from the environment only: set them for the block, then restore."""
    keys = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(dict(zip(keys, (username, password))))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def ensure_users(tracking_uri: str, admin: tuple[str, str], users: Mapping[str, str]) -> dict[str, str]:
    """Create each ``username: password`` of ``users`` as a non-admin user, or reset its password when it exists.

    Returns:
        ``{username: "created" | "updated"}``.
    """
    from mlflow.exceptions import RestException
    from mlflow.server.auth.client import AuthServiceClient

    client = AuthServiceClient(tracking_uri)
    done: dict[str, str] = {}
    with _credentials(*admin):
        for username, password in users.items():
            if not username or not password:
                raise SettingsError(f"MLflow user {username!r}: empty user name or password")
            try:
                client.get_user(username)
            except RestException as e:
                if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise ServiceError(f"{tracking_uri}: cannot manage users as {admin[0]!r}: {e.message}") from e
                client.create_user(username, password)
                done[username] = "created"
            else:
                client.update_user_password(username, password)
                done[username] = "updated"
    return done


def _wait(url: str, timeout: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=5)
            return
        except OSError as e:
            if time.monotonic() > deadline:
                raise ServiceError(f"{url}: MLflow did not answer within {timeout:.0f} s ({e})") from e
            time.sleep(2)


def main() -> int:
    """Entry point of Job ``mlflow-users``: every credential from the environment (:data:`ENV`)."""
    missing = [v for pair in ENV.values() for v in pair if not os.environ.get(v)] + (
        [] if os.environ.get("MLFLOW_TRACKING_URI") else ["MLFLOW_TRACKING_URI"]
    )
    if missing:
        raise SettingsError(f"missing environment variables: {', '.join(missing)}")
    uri = os.environ["MLFLOW_TRACKING_URI"]
    _wait(uri, timeout=float(os.environ.get("CSFNET_MLFLOW_WAIT_S", "300")))
    creds = {role: (os.environ[u], os.environ[p]) for role, (u, p) in ENV.items()}
    users = dict([creds["pipeline"], creds["serving"]])
    for username, action in ensure_users(uri, creds["admin"], users).items():
        print(f"MLflow user {username}: {action}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
