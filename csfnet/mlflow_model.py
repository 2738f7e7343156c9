"""MLflow models-from-code entry point of the registered detector (no pickled objects in the model)."""

from mlflow.models import set_model

from csfnet.detect.serving import SlicedDetectorModel

set_model(SlicedDetectorModel())
