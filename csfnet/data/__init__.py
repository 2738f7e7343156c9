"""Data steps: synthetic benchmark, ingestion of public video formats, frame extraction, statistics."""
