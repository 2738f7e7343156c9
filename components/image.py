"""The container image every component runs in (built from infra/docker/; override with $CSFNET_IMAGE)."""

import os

IMAGE = os.environ.get("CSFNET_IMAGE", "ghcr.io/csfnet/csfnet:0.1.0-cuda")
