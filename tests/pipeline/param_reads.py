"""Record which params keys a process reads: every field read on a validated ``Params`` tree.

``install(path)`` wraps ``Params.model_validate`` so that each validated tree registers the dotted
path of every section in it, and wraps attribute access on every schema class so that
reading a value (not a section) appends its dotted key to ``path``, once per key and process.
Reads made while validating (the schema's own cross-checks) happen before registration and do
not count: they are checks of the file, not settings the stage uses; the same holds for the
checks every stage's loader runs after validation (:data:`FILE_CHECKS`). ``model_dump()`` reads
``__dict__`` directly and does not count either (logging the whole config is not using it).

Loaded into every Python process of a stage (Ray workers included) through the
``sitecustomize`` that :func:`sitecustomize_source` writes, keyed on ``MITP_PARAM_READS``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pydantic import BaseModel

ENV = "MITP_PARAM_READS"
# (module file name, function): config checks that pipeline.cli.load runs for every stage
FILE_CHECKS = {("backbones.py", "check_depth"), ("rules.py", "check_params"),
               ("rules.py", "check_cache_layer")}  # fit applies the cache-layer rule again


def _in_file_check() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        code = frame.f_code
        if (Path(code.co_filename).name, code.co_name) in FILE_CHECKS:
            return True
        frame = frame.f_back
    return False


def install(path: str | Path) -> None:
    from mitp.config import params as config

    sections: dict[int, tuple[str, BaseModel]] = {}  # id -> (dotted path, the object, kept alive)
    seen: set[str] = set()

    def register(obj: BaseModel, prefix: str) -> None:
        sections[id(obj)] = (prefix, obj)
        for name in type(obj).model_fields:
            value = obj.__dict__.get(name)
            if isinstance(value, BaseModel):
                register(value, f"{prefix}{name}.")

    def record(key: str) -> None:
        if key not in seen:
            seen.add(key)
            with open(path, "a") as f:  # appended at once: Ray may end a worker without atexit
                f.write(key + "\n")

    original_validate = config.Params.model_validate.__func__

    def model_validate(cls, *args, **kwargs):
        params = original_validate(cls, *args, **kwargs)
        register(params, "")
        return params

    config.Params.model_validate = classmethod(model_validate)

    def getattribute(self, name, _get=object.__getattribute__):
        value = _get(self, name)
        if name in _get(self, "__class__").model_fields and not isinstance(value, BaseModel):
            entry = sections.get(id(self))
            if entry is not None and entry[1] is self and not _in_file_check():
                record(entry[0] + name)
        return value

    for cls in schema_classes(config.Params):
        cls.__getattribute__ = getattribute


def schema_classes(model: type[BaseModel]) -> set[type[BaseModel]]:
    """``model`` and every section class under it."""
    found = {model}
    for field in model.model_fields.values():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            found |= schema_classes(ann)
    return found


def sitecustomize_source() -> str:
    return (f"import os\nif os.environ.get({ENV!r}):\n"
            f"    from tests.pipeline.param_reads import install\n    install(os.environ[{ENV!r}])\n")


def read_keys(path: Path) -> set[str]:
    return set(path.read_text().split()) if path.exists() else set()


def env_for(record_file: Path, site_dir: Path, repo: Path) -> dict[str, str]:
    """The environment of a recorded stage process (``site_dir`` holds the sitecustomize)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env.update({ENV: str(record_file), "PYTHONPATH": f"{site_dir}{os.pathsep}{repo}",
                "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"})
    return env
