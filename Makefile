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

# Soak/load benchmark: its own server on ephemeral loopback ports, 200 connections for 120 s;
# a table on stdout and JSON in bench/results/ (see bench/README.md).
.PHONY: soak
soak: $(STAMP)
	$(BIN)/python bench/soak.py

# Benchmarks: every script in bench/ one after another (bench/run_all.py: fixture start-up,
# SMTP accept, POP3, reactor stall, memory), then one table of their headline figures and JSON
# in bench/results/. BENCH_ARGS=--quick for a short run (see bench/run_all.py --help).
bench: $(STAMP) bench-servers
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)

# The comparators Postfix and Dovecot's POP3 server, from Debian when missing (root with apt-get
# only; the benchmarks skip their rows with a note without them). Installing them must never
# start the system's own postfix or dovecot: unless a policy-rc.d is already there, one that
# refuses every start (exit 101) is in place for the install and removed afterwards.
.PHONY: bench-servers
bench-servers:
	@missing=""; \
	PATH="$$PATH:/usr/sbin:/sbin"; \
	command -v postfix >/dev/null 2>&1 || missing="$$missing postfix"; \
	{ command -v dovecot >/dev/null 2>&1 && [ -e /usr/lib/dovecot/pop3 ]; } \
	  || missing="$$missing dovecot-pop3d"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  if [ ! -e /usr/sbin/policy-rc.d ]; then \
	    trap 'rm -f /usr/sbin/policy-rc.d' EXIT; trap 'exit 130' INT TERM; \
	    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; \
	  fi; \
	  echo "postfix postfix/main_mailer_type select No configuration" \
	    | debconf-set-selections >/dev/null 2>&1; \
	  (apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends --no-remove $$missing >/dev/null 2>&1) \
	    || echo "note: could not install$$missing; the benchmarks skip those comparators"; \
	else echo "note:$$missing not installed; the benchmarks skip those comparators"; fi
