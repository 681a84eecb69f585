"""Serving as MLflow users expect (issue 23): the logged model carries its code and requirements,
its ``serving_input_example.json`` (a base64 PNG) is answered by MLflow's own scoring server
with a label, and the server's answer is strict JSON (a failed row is null, never NaN)."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pytest
import yaml

from mitp.data.manifests import read_split
from mitp.tracking import pyfunc as mlflow_model


@pytest.fixture(scope="module")
def logged(trained_run, tmp_path_factory) -> Path:
    """The run's pyfunc model, downloaded as an MLflow user gets it."""
    mlflow.set_tracking_uri(trained_run.tracking_uri)
    dest = tmp_path_factory.mktemp("logged")
    return Path(mlflow.artifacts.download_artifacts(f"runs:/{trained_run.run_id}/model", dst_path=str(dest)))


def _strict(text: str):
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_logged_model_lists_its_code_and_requirements(logged):
    """``--env-manager virtualenv`` builds from these: the code the model imports and a pin for
    every package that code imports."""
    mlmodel = yaml.safe_load((logged / "MLmodel").read_text())
    flavor = mlmodel["flavors"]["python_function"]
    code = logged / flavor["code"]
    files = mlflow_model.code_files()
    assert files and all((code / rel).is_file() for rel in files)
    assert (code / "mitp/models/backbone_configs/tiny_vocab_words.txt").is_file()
    assert not list(code.rglob("__pycache__"))
    assert flavor["config"] == {"image_root": None}  # the owner's to set; no paths by default
    reqs = {line.split("==")[0].lower() for line in (logged / "requirements.txt").read_text().splitlines()
            if line and not line.startswith("#")}
    for needed in ("torch", "transformers", "safetensors", "pillow", "pandas", "mlflow", "pydantic", "pyyaml",
                   "numpy", "tqdm", "matplotlib"):
        assert needed in reqs, needed


def test_logged_code_alone_loads_and_answers(logged):
    """A fresh interpreter outside the repository: MLflow puts the logged ``code/`` first on the
    path, so the model runs on the code it was logged with."""
    script = ("import json, sys, mlflow, pandas as pd\n"
              "m = mlflow.pyfunc.load_model(sys.argv[1])\n"
              "import mitp\n"
              "ex = json.load(open(sys.argv[1] + '/serving_input_example.json'))['dataframe_split']\n"
              "out = m.predict(pd.DataFrame(ex['data'], columns=ex['columns']))\n"
              "print(json.dumps({'mitp': mitp.__file__, 'label': out['label'].iat[0]}))\n")
    out = subprocess.run([sys.executable, "-c", script, str(logged)], cwd=logged, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(got["mitp"]).resolve().is_relative_to(logged.resolve() / "code")
    assert got["label"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(logged):
    """MLflow's scoring app (what ``mlflow models serve`` runs) on 127.0.0.1, in this process."""
    import uvicorn
    from mlflow.pyfunc import scoring_server

    app = scoring_server.init(mlflow.pyfunc.load_model(str(logged)))
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline, "scoring server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


def _post(url: str, body: bytes) -> tuple[int, str]:
    req = urllib.request.Request(url + "/invocations", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_scoring_server_answers_the_logged_serving_example(trained_run, logged, server):
    example = (logged / "serving_input_example.json").read_text()
    image = json.loads(example)["dataframe_split"]["data"][0][0]
    assert isinstance(image, str) and base64.b64decode(image, validate=True).startswith(b"\x89PNG")
    status, text = _post(server, example.encode())
    assert status == 200, text
    labels = mlflow_model.trained_model.read_card(trained_run.folder)["labels"]
    assert _strict(text)["predictions"][0]["label"] in labels


def test_scoring_server_base64_image_and_strict_json(trained_run, server, tmp_path):
    """A base64 image is answered with a label; a path (none allowed by default) and a broken
    image are error rows whose label and probabilities are null, in strict JSON."""
    manifest = read_split(trained_run.params.prepared_dir("synthetic"), "test")
    image = base64.b64encode(manifest.image_path(0).read_bytes()).decode()
    body = {"dataframe_records": [{"image": image, "text": manifest.frame["text"].iat[0]},
                                  {"image": str(manifest.image_path(1)), "text": "a text"},
                                  {"image": base64.b64encode(b"not an image").decode(), "text": "a text"}]}
    status, text = _post(server, json.dumps(body).encode())
    assert status == 200, text
    rows = _strict(text)["predictions"]
    assert rows[0]["label"] and rows[0]["error"] is None
    for row in rows[1:]:
        assert row["label"] is None and row["error"]
        assert all(v is None for k, v in row.items() if k.startswith("prob_"))
    assert "not accepted" in rows[1]["error"]


def test_logged_model_is_described_and_keeps_its_uri(trained_run):
    """The name stays ``model`` (``runs:/<id>/model`` users); kind, dataset and backbone are the
    logged model's type and tags in MLflow's model lists."""
    mlflow.set_tracking_uri(trained_run.tracking_uri)
    found = mlflow.search_logged_models(filter_string=f"source_run_id = '{trained_run.run_id}'",
                                        output_format="list")
    assert [m.name for m in found] == ["model"]
    assert found[0].model_type == "mitp-mitp"
    assert found[0].tags["mitp.dataset"] == "synthetic" and found[0].tags["mitp.backbone"] == "tiny-random"


def test_serve_config_from_the_environment_allows_paths_under_the_root(trained_run, logged, monkeypatch):
    """``mlflow models serve`` has no --model-config: MLFLOW_PYFUNC_INFERENCE_CONFIG sets image_root."""
    import pandas as pd

    manifest = read_split(trained_run.params.prepared_dir("synthetic"), "test")
    root = manifest.image_path(0).parent
    monkeypatch.setenv("MLFLOW_PYFUNC_INFERENCE_CONFIG", json.dumps({"image_root": str(root)}))
    model = mlflow.pyfunc.load_model(str(logged))
    got = model.predict(pd.DataFrame({"image": [manifest.image_path(0).name, "../" + root.name + "/x/../../.."],
                                      "text": ["a text", "a text"]}))
    assert got["label"].iat[0] and got["error"].iat[0] is None
    assert got["label"].iat[1] is None and "under the image root" in got["error"].iat[1]


@pytest.mark.slow
def test_mlflow_models_serve_cli_answers_the_serving_example(trained_run, logged):
    """The real ``mlflow models serve --env-manager local`` (uvicorn in its own process) on
    127.0.0.1 answers the logged example with a label and refuses a path as a null row."""
    import os
    import signal

    port = _free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", str(logged), "--env-manager",
                             "local", "-h", "127.0.0.1", "-p", str(port)], cwd=logged, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            try:
                with urllib.request.urlopen(url + "/ping", timeout=5):
                    break
            except OSError:
                assert time.monotonic() < deadline, "mlflow models serve did not come up"
                time.sleep(1)
        status, text = _post(url, (logged / "serving_input_example.json").read_bytes())
        assert status == 200, text
        labels = mlflow_model.trained_model.read_card(trained_run.folder)["labels"]
        assert _strict(text)["predictions"][0]["label"] in labels
        body = {"dataframe_records": [{"image": "/etc/hostname.png", "text": "a text"}]}
        status, text = _post(url, json.dumps(body).encode())
        assert status == 200 and _strict(text)["predictions"][0]["label"] is None
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its uvicorn worker, started here
        proc.wait(timeout=30)
