"""Every error a user can cause, in one place.

Anything deriving from :class:`CsfnetError` is the user's to fix (bad settings, paths, data, checkpoints, services
that cannot be reached): the command line prints its message on one line and exits with code 2, no traceback.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class CsfnetError(Exception):
    """A problem the user can fix; the message says what and where."""


class SettingsError(CsfnetError, ValueError):
    """A setting in params.yaml or on the command line is invalid; the message names the file, key and value."""


class DataError(CsfnetError, ValueError):
    """Bad input data; the message says where (sequence, file, frame) and what is wrong."""


class InputNotFoundError(CsfnetError, FileNotFoundError):
    """A file or folder the command needs does not exist."""


class CheckpointError(CsfnetError, ValueError):
    """A model file exists but is not a usable checkpoint or model."""


class ServiceError(CsfnetError, ConnectionError):
    """A service (MLflow, Optuna storage, S3) cannot be reached; the message names it, credentials masked."""


class VerificationError(CsfnetError, RuntimeError):
    """An exported model does not reproduce the PyTorch model; the report says which check failed."""
