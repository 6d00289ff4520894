# Quick start: `make run` (app on http://127.0.0.1:8501) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run test test-fast tiny-models bench eval

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	@touch $(STAMP)

setup: $(STAMP)

run: setup
	$(PY) -m streamlit run app.py --server.address 127.0.0.1 --server.port 8501

test: setup
	$(PY) -m pytest

# Everything except the real-browser tests.
test-fast: setup
	$(PY) -m pytest -m "not browser"

tiny-models: setup
	$(PY) tests/fixtures/tiny_models.py /tmp/tiny

eval: setup
	$(PY) cli.py eval ../shared/data/images --models tesseract,rapidocr

bench: setup
	$(PY) cli.py bench ../shared/data/images --models tesseract,rapidocr
