# dunning-worker developer commands. `make help` lists them.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: help venv demo check lint layers typecheck test services compose browser i18n

help: ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

# Keyed on what is installed (scripts/installed), not on a file: after the README's first
# command (no dev tools yet) or a pull that changes pyproject.toml, this installs again.
venv: ## create .venv with the package and dev tools, or bring it up to pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python scripts/installed || { $(BIN)/pip install -q --upgrade pip && \
		$(BIN)/pip install -q -e '.[dev]' && $(BIN)/python scripts/installed; }

demo: venv ## run the simulated month on embedded defaults
	$(BIN)/dunning demo

services: ## start PostgreSQL and Redis on this machine if they are not running
	@scripts/services

browser: ## Debian's chromium for the HTML report test (no-op when installed)
	@scripts/browser

lint: venv ## ruff (lint + format check)
	$(BIN)/ruff check worker tests bench migrations
	$(BIN)/ruff format --check worker tests bench migrations

layers: venv ## import-linter: packages import downward only (pyproject.toml)
	$(BIN)/lint-imports

typecheck: venv ## mypy on the package
	$(BIN)/mypy

test: venv services browser ## the test suite (T=path for one file)
	$(BIN)/python -m pytest $(T)

compose: ## validate docker-compose.yml (docker compose v2, else docker-compose v1)
	@if docker compose version >/dev/null 2>&1; then docker compose config -q; \
	elif command -v docker-compose >/dev/null; then docker-compose config -q; \
	else echo "compose: no docker compose on this machine, docker-compose.yml not validated"; fi

i18n: venv ## extract the emails' and pages' sentences; merge them into every catalog
	$(BIN)/pybabel extract -F config/babel.cfg -k N_ --ignore-dirs ".* .venv __pycache__" \
		--no-wrap --omit-header -o templates/locale/messages.pot .
	$(BIN)/pybabel update --no-wrap --ignore-obsolete -i templates/locale/messages.pot \
		-d templates/locale

check: lint layers typecheck compose test ## everything CI runs: lint, layers, types, compose file, tests
