"""The container image every component runs in (built from infra/docker/; override with $CSFNET_IMAGE).

Components declare ``install_kfp_package=False``: the image carries the kfp the pipeline is compiled with
(pyproject's pin, repeated in infra/docker/requirements.txt), so pods install nothing and run air-gapped.
"""

import os

from kfp import dsl

IMAGE = os.environ.get("CSFNET_IMAGE", "ghcr.io/csfnet/csfnet:0.1.0-cuda")


def component(func):
    """``@dsl.component`` in the project image, with nothing installed at pod start."""
    return dsl.component(func, base_image=IMAGE, install_kfp_package=False)
