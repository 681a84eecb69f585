"""The import path models logged before the by-stage layout name in their stored code file
(``from mitp.mlflow_model import MITPPyfunc``); they keep loading through this alias."""

from mitp.tracking.pyfunc import MITPPyfunc

__all__ = ["MITPPyfunc"]
