"""The file MLflow stores as the pyfunc model's code ("models from code", no pickled object):
loading the model runs it, and it names the class that serves it."""

import mlflow

from mitp.tracking.pyfunc import MITPPyfunc

mlflow.models.set_model(MITPPyfunc())
