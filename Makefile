# The two commands of the README. Both create .venv on first use; nothing else to install.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test bench install clean

run: $(VENV)/.run-installed
	$(BIN)/gateway serve

# One test process per core; a module's tests stay in one process (--dist loadfile), so the
# servers and browsers a module shares start once. PYTEST_ARGS="-n 0" runs it in one process.
test: $(VENV)/.test-installed
	$(BIN)/python -m pytest -n auto --dist loadfile $(PYTEST_ARGS)

bench: $(VENV)/.test-installed
	$(BIN)/python bench/smtp_ingest.py
	$(BIN)/python bench/webhook_ingest.py
	$(BIN)/python bench/outbound.py

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# A plain (non-editable) install, exactly as a deployment gets it.
$(VENV)/.run-installed: $(BIN)/python pyproject.toml $(shell find gateway webhooks templates config -type f -not -name '*.pyc' 2>/dev/null)
	$(BIN)/python -m pip install --quiet .
	touch $@

# Tests import the working tree (editable) and need the test extras.
# The page tests drive Debian's chromium (tests/browser.py): Playwright's own download is unreachable.
$(VENV)/.test-installed: $(BIN)/python pyproject.toml
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core >/dev/null)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.run-installed
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info
