"""Models logged before the by-stage layout store a code file that imports
``mitp.mlflow_model.MITPPyfunc``; that import path keeps working (an alias of the pyfunc class)."""

from __future__ import annotations

OLD_ENTRY = '''import mlflow

from mitp.mlflow_model import MITPPyfunc

mlflow.models.set_model(MITPPyfunc())
'''


def test_the_code_file_of_an_older_logged_model_still_names_the_serving_class(monkeypatch):
    import mlflow

    from mitp.tracking.pyfunc import MITPPyfunc

    served = []
    monkeypatch.setattr(mlflow.models, "set_model", served.append)
    exec(compile(OLD_ENTRY, "python_model.py", "exec"), {})  # what loading such a model runs
    assert len(served) == 1 and type(served[0]) is MITPPyfunc
