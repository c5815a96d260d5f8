# sip-policy-proxy developer entry points.
#
#   make venv    create/update .venv with the project installed editable (+ test deps, mypy, ruff)
#   make run     make venv, then run the proxy in the foreground with ./proxy.yaml (CONFIG=...)
#   make test    install missing system packages (sipp, redis-server, docker-compose), make venv,
#                run the whole pytest suite
#   make lint    ruff + mypy (strict on proxy/sip, transaction, policy, core, transport)
#   make bench   sipp load test of the proxy (BENCH_ARGS="--kamailio" adds the Kamailio anchor,
#                "--proxies 1,2 --redis" one proxy against two sharing a redis; bench/README.md)
#
# Works on a fresh Debian machine, as root or as a user with sudo; needs no stdin.

SHELL := /bin/sh
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   ?= .venv
CONFIG ?= proxy.yaml
PYTEST_ARGS ?=
BENCH_ARGS  ?=

VPY   := $(VENV)/bin/python
# The stamp lives inside the venv: deleting .venv also forgets that it was installed.
STAMP := $(VENV)/.sip-policy-proxy-installed

# apt-get as root, or through sudo otherwise.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# $(call apt_ensure,BINARY:PACKAGE ...): install each PACKAGE whose BINARY is not found on PATH
# (nor in /usr/sbin, /sbin), with one `apt-get update` first, and only when something is missing.
# A BINARY starting with / is a file that must exist (e.g. a plugin the package ships).
define apt_ensure
	@missing=""; \
	for pair in $(1); do \
	  bin=$${pair%%:*}; pkg=$${pair#*:}; \
	  case "$$bin" in \
	    /*) [ -e "$$bin" ] || missing="$$missing $$pkg";; \
	    *) command -v "$$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$$bin" ] || [ -x "/sbin/$$bin" ] \
	         || missing="$$missing $$pkg";; \
	  esac; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing \
	    </dev/null; \
	else \
	  echo "system packages present: $(strip $(foreach p,$(1),$(lastword $(subst :, ,$(p)))))"; \
	fi
endef

TEST_SYSDEPS  := sipp:sip-tester redis-server:redis-server redis-cli:redis-tools docker-compose:docker-compose \
  systemd-analyze:systemd
# Kamailio with its tls module is the real TLS SIP peer of tests/e2e/test_tls_e2e.py.
TEST_SYSDEPS  += kamailio:kamailio \
  /usr/lib/x86_64-linux-gnu/kamailio/modules/tls.so:kamailio-tls-modules
BENCH_SYSDEPS := sipp:sip-tester timeout:coreutils
ifneq ($(filter --kamailio,$(BENCH_ARGS)),)
# uac_redirect (loaded by bench/kamailio.cfg) is in kamailio-extra-modules.
BENCH_SYSDEPS += kamailio:kamailio \
  /usr/lib/x86_64-linux-gnu/kamailio/modules/uac_redirect.so:kamailio-extra-modules
endif
ifneq ($(filter --redis,$(BENCH_ARGS)),)
# --redis starts a throw-away redis-server shared by the N proxies (--proxies 2).
BENCH_SYSDEPS += redis-server:redis-server
endif

.PHONY: help venv run test sysdeps lint bench bench-sysdeps clean

help:
	@echo "targets: venv run test lint bench clean"
	@echo "  make run CONFIG=path/to/proxy.yaml"
	@echo "  make test PYTEST_ARGS='-k registrar'"
	@echo "  make bench BENCH_ARGS='--kamailio --rates 100,200,400'"

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(VPY) || { echo "creating $(VENV)"; $(PYTHON) -m venv $(VENV); }
	$(VPY) -m pip install -q --disable-pip-version-check -e '.[test]' mypy ruff
	@touch $@

run: venv
	$(VENV)/bin/sip-policy-proxy run --config $(CONFIG)

sysdeps:
	$(call apt_ensure,$(TEST_SYSDEPS))

# pytest's exit code is the recipe's exit code: any failure (1), interruption (2), internal or
# usage error (3, 4) and "no tests collected" (5) fail `make test`, and so CI.
test: sysdeps venv
	$(VPY) -m pytest -q $(PYTEST_ARGS)

# Both run, and either failing fails the target (CI runs it before `make test`).
lint: venv
	@rc=0; \
	$(VENV)/bin/ruff check proxy tests bench || rc=1; \
	$(VENV)/bin/mypy || rc=1; \
	exit $$rc

bench-sysdeps:
	$(call apt_ensure,$(BENCH_SYSDEPS))

# matplotlib (the `bench` extra) draws results.png; run.py works without it, minus the plot.
bench: bench-sysdeps venv
	@$(VPY) -c 'import matplotlib' 2>/dev/null || \
	  $(VPY) -m pip install -q --disable-pip-version-check -e '.[bench]'
	$(VPY) bench/run.py $(BENCH_ARGS)

# Caches and benchmark output only; .venv is kept (remove it by hand to start over).
clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache bench/results
	find proxy tests bench -name __pycache__ -type d -prune -exec rm -rf {} +
