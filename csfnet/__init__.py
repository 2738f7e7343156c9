"""CSF-Net: cross-stage fusion dual-backbone detector for micro-UAVs, with an MLOps pipeline around it."""

from csfnet._offline import configure_environment

configure_environment()  # before anything imports ultralytics

from csfnet import threads  # noqa: E402, F401  (reads OMP_NUM_THREADS before ultralytics' import sets it to 1)

__version__ = "0.1.0"
