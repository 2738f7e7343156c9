"""Comparisons of configurations x seeds at equal budget: statistics, cells, report."""
