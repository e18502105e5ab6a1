# Two entry points: `make run` (the embedded service) and `make test` (every test).
# Both create or update .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv run test bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints-dev.txt -e '.[dev]'
	touch $@

run: venv
	$(BIN)/diet serve

test: venv
	$(BIN)/python scripts/check_services.py
	$(BIN)/python -m pytest -q

bench: venv
	$(BIN)/diet bench --data ../shared/data/ml-100k --out bench-out

clean:
	rm -rf $(VENV) diet-data bench-out
