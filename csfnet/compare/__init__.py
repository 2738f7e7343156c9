"""Comparisons of configurations x seeds at equal budget: cells, report (their statistics: csfnet.metrics)."""
