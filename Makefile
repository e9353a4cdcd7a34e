PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint typecheck check clean

# setuptools' "Editable installation" notice (PYTHONWARNINGS below) is information about
# editable installs in general (folders named like the package may shadow it).
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	PYTHONWARNINGS="ignore:Editable installation" \
		$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,demo,tensorboard,dali]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/mile-ssl demo

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n 2 --dist loadscope tests

lint: $(STAMP)
	$(BIN)/ruff check mile_ssl adapters configs tests benchmarks examples
	$(BIN)/ruff format --check mile_ssl adapters configs tests benchmarks examples

typecheck: $(STAMP)
	$(BIN)/mypy mile_ssl adapters

check: lint typecheck test

clean:
	rm -rf $(VENV) build dist *.egg-info
