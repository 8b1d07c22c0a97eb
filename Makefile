# trovemeter: the two commands are `make demo` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
STACK := stack/stack.sh

.DEFAULT_GOAL := help
.PHONY: help venv up down status logs clean topics test unit integration demo screenshot bench

help:
	@echo "make demo    set up, start the stack and run trovemeter on simulated Trove traffic"
	@echo "make test    set up, start the stack, run unit + integration tests, stop what it started"
	@echo "make up|down|status|logs|clean   the local Kafka + RabbitMQ stack (state in .stack/); down also stops the demo's shovel and worker"
	@echo "make screenshot   headless-Chromium screenshot of the running demo's dashboard (.stack/screenshots/dashboard.png)"
	@echo "make unit | integration | bench | topics"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "trovemeter needs Python 3.11+, found " + sys.version.split()[0] + " (set PYTHON=...)")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

venv: $(STAMP)

up: $(STAMP)
	@$(STACK) up
	@$(BIN)/trovemeter topics

down:
	@$(STACK) down

status:
	@$(STACK) status

logs:
	@$(STACK) logs

clean:
	@$(STACK) clean

topics: $(STAMP)
	@$(BIN)/trovemeter topics

unit: $(STAMP)
	@$(BIN)/pytest tests/unit -q

integration: $(STAMP)
	@$(BIN)/pytest tests/integration -q

test:
	@stack/run-tests.sh

# DEMO_ARGS: flags of `trovemeter demo`, e.g. make demo DEMO_ARGS="--seed 42 --duration 40"
demo: $(STAMP)
	@$(STACK) up
	@$(BIN)/trovemeter topics >/dev/null
	@$(BIN)/trovemeter demo $(DEMO_ARGS)

# The dashboard of the running demo (make demo first), as a headless Chromium sees it.
screenshot: $(STAMP)
	@stack/ensure-chromium.sh
	@$(BIN)/python -m tests.integration.dashboard_browser --out .stack/screenshots/dashboard.png

bench: $(STAMP)
	@$(STACK) up
	@$(BIN)/trovemeter topics
	@$(BIN)/python -m bench

# Issue #9: fault injection on the real stack (kills, Kafka/RabbitMQ stop+restart, Kafka frozen
# for a minute), ~10 minutes; prints the summary table (.stack/chaos/summary.txt). It restarts
# the shared brokers: not part of `make test`, and never while other tests use the stack.
.PHONY: chaos
chaos: $(STAMP)
	@$(STACK) up
	@$(BIN)/trovemeter topics >/dev/null
	@TROVEMETER_CHAOS=1 $(BIN)/pytest tests/chaos -q -s -p no:cacheprovider --timeout 1200
