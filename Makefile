# Two entry points: `make run` (the embedded service) and `make test` (every test).
# Both create or update .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv run test browser bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints-dev.txt -e '.[dev]'
	touch $@

run: venv
	$(BIN)/diet serve

test: venv browser
	$(BIN)/python scripts/check_services.py
	$(BIN)/python -m pytest -q

# The report tests render pages in headless Chromium. Nothing to do when it is there; else it is
# installed where that is possible (Debian/Ubuntu as root, about a minute), and otherwise those
# tests are skipped with a message saying so.
browser:
	@test -x /usr/bin/chromium || { command -v apt-get >/dev/null && test "$$(id -u)" = 0 && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "note: no /usr/bin/chromium and it could not be installed here: the report rendering tests will be skipped"

bench: venv
	$(BIN)/diet bench --data ../shared/data/ml-100k --out bench-out

clean:
	rm -rf $(VENV) diet-data bench-out
