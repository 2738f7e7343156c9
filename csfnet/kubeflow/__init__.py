"""Kubeflow Pipelines, split by where the code runs.

- :mod:`csfnet.kubeflow.step`: helpers a component calls inside its pod (run a ``csfnet`` command, log metrics).
- :mod:`csfnet.kubeflow.fingerprint`: the content fingerprint of the raw data (the raw-data step's output).
- :mod:`csfnet.kubeflow.deploy`: the KServe InferenceService of the champion (render, apply).
- :mod:`csfnet.kubeflow.trainjob`: the Kubeflow Trainer TrainJob of a ``csfnet train`` command (render, outcome).
- :mod:`csfnet.kubeflow.trainjob_run`: create a TrainJob from a pipeline step, stream its log, wait, fail with its
  reason.
- :mod:`csfnet.kubeflow.storage`: KServe's storage initializer for ``models:/`` URIs (runs in the predictor pod).
- :mod:`csfnet.kubeflow.mlflow_users`: the MLflow basic-auth users of the pipeline and of serving (Job).
- :mod:`csfnet.kubeflow.client`: compile, submit or run the pipeline locally, on the user's machine.

Nothing here imports :mod:`csfnet.cli`; steps run the command line in a subprocess (``python -m csfnet``).
"""
