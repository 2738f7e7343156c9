"""CSF-Net: cross-stage fusion dual-backbone detector for micro-UAVs, with an MLOps pipeline around it."""

from csfnet._offline import configure_environment

configure_environment()  # before anything imports ultralytics

__version__ = "0.1.0"
