# Bosun: two commands on a fresh Debian/Ubuntu machine (as root or with sudo):
#   make run    install what is missing, migrate the embedded database, serve web + worker
#   make test   install what is missing (test profile), lint, type-check, run the tests
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv/bin

export BOSUN_TEST_POSTGRES_URL ?= postgresql+asyncpg://bosun:bosun@127.0.0.1:5432/bosun_test
# The password the bootstrap's Redis requires (generated once, root-only): handed to the tests
# and to `bosun up` as a file, never as a value.
REDIS_PASSWORD_FILE ?= /etc/bosun/redis-password
export BOSUN_TEST_REDIS_URL ?= redis://127.0.0.1:6379/15
export BOSUN_TEST_REDIS_PASSWORD_FILE ?= $(REDIS_PASSWORD_FILE)
# Browser tests drive the Debian Chromium the bootstrap installs (Playwright's own download
# needs a CDN this kind of machine cannot reach).
export BOSUN_TEST_CHROMIUM ?= $(shell command -v chromium || command -v chromium-browser)
# Under CI the bootstrap builds the service image for the deployment tests (scripts/bootstrap.sh).
export BOSUN_TEST_SERVICE_IMAGE ?= $(if $(filter true,$(CI)),bosun:test,)
PYTEST_ARGS ?=

.PHONY: help run test bootstrap bootstrap-run bootstrap-test lint format typecheck pytest \
	images agent-image service-image

help:
	@echo "make run            set up and run Bosun (bosun up: web + worker, local Redis if none)"
	@echo "make test           set up and run lint, type checks and tests"
	@echo "make bootstrap      install/start everything the tests need (scripts/bootstrap.sh test)"
	@echo "make lint           ruff check + ruff format --check"
	@echo "make format         ruff format + ruff check --fix"
	@echo "make typecheck      mypy --strict on bot, jobs, sandboxes"
	@echo "make pytest         the test suite only (PYTEST_ARGS=... to pass options)"
	@echo "make images         the agent sandbox image and the Bosun service image"

run: export BOSUN_REDIS__PASSWORD_FILE ?= $(REDIS_PASSWORD_FILE)
run: bootstrap-run
	$(VENV)/bosun migrate && exec $(VENV)/bosun up

# Every check runs even when an earlier one fails, so one CI run reports all of them.
test: bootstrap-test
	@failed=""; \
	run() { echo "==> $$*"; "$$@" || failed="$$failed\n  - $$*"; }; \
	run $(VENV)/ruff check .; \
	run $(VENV)/ruff format --check .; \
	run $(VENV)/mypy; \
	run $(VENV)/pytest -q --durations=25 $(PYTEST_ARGS); \
	if [ -n "$$failed" ]; then printf "==> failed:$$failed\n"; exit 1; fi; \
	echo "==> all checks passed"

bootstrap: bootstrap-test

bootstrap-run:
	scripts/bootstrap.sh run

bootstrap-test:
	scripts/bootstrap.sh test

lint:
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .

format:
	$(VENV)/ruff format .
	$(VENV)/ruff check --fix .

typecheck:
	$(VENV)/mypy

pytest:
	$(VENV)/pytest -q $(PYTEST_ARGS)

images: agent-image service-image

agent-image:
	sandboxes/images/build.sh --if-changed

service-image:
	scripts/build_service_image.sh
