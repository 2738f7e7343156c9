"""Kubeflow pipeline definitions; see csfnet_pipeline.py."""
