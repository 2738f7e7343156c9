"""Data steps: ingestion from a source (``source``), the synthetic benchmark (``synth``), raw layouts (``formats``),
frame extraction and tiling (``extract``, ``tiles``), the ingestion report and MLflow dataset record (``report``),
statistics (``stats``)."""
