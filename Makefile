# Quick start:  make repro   (the offline default, end to end)
#               make test    (the test suite)
# Both create or refresh the local virtualenv .venv first.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# The paper setting: the three real datasets, ViT-B/16 + BERT-base, M = 8, h = 384, s = 8.
PAPER_SET := -S 'datasets=[food101,mmimdb,snli_ve]' -S backbone.preset=vit-base+bert-base \
	-S model.prompt_length=8 -S model.hub_size=384 -S model.interaction.start=8 -S model.interaction.interval=1 \
	-S cache.layer=6 -S train.epochs=10 -S train.batch_size=32 -S train.lr=5e-4 -S train.num_workers=4 \
	-S 'sweep.space={model.prompt_length: {grid: [4, 8, 16]}, model.hub_size: {grid: [128, 384]}, model.interaction.start: {grid: [6, 8, 10]}}' \
	-S sweep.resources_per_trial.cpu=4 -S sweep.resources_per_trial.gpu=0.5 -S sweep.train.epochs=5

.PHONY: venv repro repro-paper test test-fast lint clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

repro: venv
	PATH="$(abspath $(VENV))/bin:$$PATH" dvc repro

repro-paper: venv
	PATH="$(abspath $(VENV))/bin:$$PATH" dvc exp run $(PAPER_SET)

test: venv
	$(PY) -m pytest -q -ra

test-fast: venv
	$(PY) -m pytest -q -ra -m "not slow"

lint: venv
	$(PY) -m ruff check mitp pipeline tests benchmarks

clean:
	rm -rf $(VENV)
