# mailhost: `make run` starts a provider with demo accounts; `make test` runs the whole suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/mailhost serve --demo-accounts $(ARGS)

test: $(STAMP) interop-clients
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Real clients for the interoperability tests (swaks needs Net::SSLeay for --tls) and Debian's
# Chromium with its driver for the dashboard's browser test; the tests skip with a reason if
# these are missing. At most one quiet apt-get update, only when needed.
.PHONY: interop-clients
interop-clients:
	@missing=""; \
	command -v swaks >/dev/null 2>&1 || missing="$$missing swaks"; \
	perl -MNet::SSLeay -e 1 >/dev/null 2>&1 || missing="$$missing libnet-ssleay-perl"; \
	command -v curl >/dev/null 2>&1 || missing="$$missing curl"; \
	command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null 2>&1 || missing="$$missing chromium-driver"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  (apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends $$missing >/dev/null 2>&1) \
	    || echo "note: could not install$$missing; their interop tests will be skipped"; \
	else echo "note:$$missing not installed; their interop tests will be skipped"; fi

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .hypothesis

# Soak/load benchmark: its own server on ephemeral loopback ports, 200 connections for 60 s;
# a table on stdout and JSON in bench/results/ (see bench/README.md).
.PHONY: soak
soak: $(STAMP)
	$(BIN)/python bench/soak.py

# Fixture start-up benchmark: mailhost serve's cold start and reset against aiosmtpd's
# Controller (the bench extra); a table on stdout and JSON in bench/results/.
bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	$(BIN)/python bench/fixture_startup.py
