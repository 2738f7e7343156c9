"""Kubeflow pipeline definitions: csfnet_pipeline.py (the DVC pipeline, tuning fanned out) and compare_pipeline.py."""
