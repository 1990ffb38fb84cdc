# Set-up and the two everyday commands. Both build .venv from the exact, tested constraints when it
# is missing (plain pip: it picks up the CPU build of torch; torch is pinned in the same request).
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.edgetrim-installed

.PHONY: demo test lint format clean-venv

$(STAMP): constraints.txt pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -c constraints.txt torch==2.13.0 -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/edgetrim demo --out demo_out

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check edgetrim tests benchmarks
	$(VENV)/bin/ruff format --check edgetrim tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff format edgetrim tests benchmarks
	$(VENV)/bin/ruff check --fix edgetrim tests benchmarks

clean-venv:
	rm -rf $(VENV)
