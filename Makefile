# sip-policy-proxy developer entry points.
#
#   make venv    create/update .venv with the project installed editable (+ test deps, mypy, ruff),
#                pure Python: the compiled build is `make compiled`'s
#   make compiled  compile the sans-IO packages with mypyc in place (.so beside each .py), again
#                whenever one of their .py files (or setup.py) is newer than the build
#   make run     make venv, then run the proxy in the foreground with ./proxy.yaml (CONFIG=...)
#   make test    install missing system packages (sipp, redis-server, docker-compose, kamailio,
#                baresip, nodejs, npm, chromium, tshark, sngrep), JsSIP with npm, make venv,
#                make compiled, run the whole pytest suite (tests/unit, conformance, system,
#                e2e; README "Tests") against the compiled build (without a C compiler it says
#                so and runs it pure)
#   make test-pure  the whole suite with SIP_POLICY_PROXY_PURE=1 (the .py files, .so ignored)
#   make lint    ruff + mypy (strict on proxy/sip, transaction, policy, core, transport)
#   make bench   sipp load test of the proxy (BENCH_ARGS="--kamailio" adds the Kamailio anchor,
#                "--proxies 1,2 --redis" one proxy against two sharing a redis; bench/README.md)
#                (make bench-sysdeps, then .venv/bin/python bench/hostile.py: the hostile load)
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
# mypy (and so mypyc) at the version that pyproject.toml's [build-system] builds with.
MYPY_REQ := mypy==2.4.1

# The compiled build (README "Compiled build"): setup.py runs mypyc on these packages and
# builds, in place, one extension per module beside its .py plus the shared library
# ./sip_policy_proxy__mypyc*.so. Every extension is rebuilt when any source is newer than it.
SANS_IO_SRC := $(sort $(shell find proxy/sip proxy/transaction proxy/core proxy/policy -name '*.py'))
EXT_SUFFIX  := $(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
SANS_IO_EXT := $(SANS_IO_SRC:.py=$(EXT_SUFFIX))
# "yes" when setup.py can build C extensions here: the C compiler it would run ($CC, else
# Python's own) and Python.h are present. Without them `make test` runs the suite pure.
CAN_COMPILE := $(shell $(PYTHON) -c 'import os, shlex, shutil, sysconfig; \
  cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")[0]; \
  h = os.path.join(sysconfig.get_paths()["include"], "Python.h"); \
  print("yes" if shutil.which(cc) and os.path.exists(h) else "no")')
ifeq ($(CAN_COMPILE),yes)
TEST_BUILD := compiled
else
TEST_BUILD := pure
endif

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
# dnsmasq (the binary only, no service) is the real DNS server of the RFC 3263 tests: NAPTR,
# SRV and A records from its command line on a loopback port.
TEST_SYSDEPS  += dnsmasq:dnsmasq-base
# Kamailio with its tls module is the real TLS SIP peer of tests/e2e/test_tls_e2e.py.
TEST_SYSDEPS  += kamailio:kamailio \
  /usr/lib/x86_64-linux-gnu/kamailio/modules/tls.so:kamailio-tls-modules
# baresip: a real phone registering through the proxy, headless (tests/e2e/test_baresip_e2e.py).
TEST_SYSDEPS  += baresip:baresip
# The browser phone (tests/e2e/test_browser_phone_e2e.py): JsSIP from npm (node, npm) in
# Debian's headless chromium, driven over the DevTools protocol.
TEST_SYSDEPS  += node:nodejs npm:npm chromium:chromium
# The tracing tests' real peers: tshark (Wireshark's SIP dissector) and sngrep (a HEP
# listener) decode the HEP export (Kamailio's sipcapture module, in the kamailio package, too);
# headless chromium renders the ladder page. tshark's debconf question (non-root capture) is
# answered below, so the install needs no terminal.
TEST_SYSDEPS  += tshark:tshark sngrep:sngrep
# tcpdump: INVITE->200 latency from a capture on lo (sipp's own clock ticks every 4 ms).
# sipvicious (svmap, svwar, svcrack): the scanner step of bench/hostile.py.
BENCH_SYSDEPS := sipp:sip-tester timeout:coreutils tcpdump:tcpdump svmap:sipvicious
ifneq ($(filter --kamailio,$(BENCH_ARGS)),)
# uac_redirect (loaded by bench/kamailio.cfg) is in kamailio-extra-modules.
BENCH_SYSDEPS += kamailio:kamailio \
  /usr/lib/x86_64-linux-gnu/kamailio/modules/uac_redirect.so:kamailio-extra-modules
endif
ifneq ($(filter --redis,$(BENCH_ARGS)),)
# --redis starts a throw-away redis-server shared by the N proxies (--proxies 2).
BENCH_SYSDEPS += redis-server:redis-server
endif

.PHONY: help venv compiled run test test-pure sysdeps browser-deps lint bench bench-sysdeps clean

help:
	@echo "targets: venv compiled run test test-pure lint bench clean"
	@echo "  make run CONFIG=path/to/proxy.yaml"
	@echo "  make test PYTEST_ARGS='-k registrar'"
	@echo "  make bench BENCH_ARGS='--kamailio --rates 100,200,400'"

venv: $(STAMP)

# Editable and pure: an editable install would compile in place too (setuptools' PEP 660
# build runs build_ext --inplace), but once, with no rebuild when a .py changes; `make
# compiled` is the one build, and it tracks the sources.
$(STAMP): pyproject.toml setup.py
	@test -x $(VPY) || { echo "creating $(VENV)"; $(PYTHON) -m venv $(VENV); }
	SIP_POLICY_PROXY_PURE=1 $(VPY) -m pip install -q --disable-pip-version-check -e '.[test]' \
	  $(MYPY_REQ) ruff
	@touch $@

compiled: $(if $(filter yes,$(CAN_COMPILE)),$(SANS_IO_EXT),no-compiler)

# Old extensions go first (a module removed or renamed leaves none behind). setup.py falls
# back to pure Python when the C build fails; here, with a compiler present, that is an error.
$(SANS_IO_EXT) &: $(SANS_IO_SRC) setup.py | $(STAMP)
	find proxy -name '*.so' -delete
	rm -f ./sip_policy_proxy__mypyc*.so
	$(VPY) setup.py -q build_ext --inplace
	@$(VPY) -c 'import proxy, sys; kind = proxy.build_kind(); print("build:", kind); \
	  sys.exit(0 if kind == proxy.COMPILED else "the compiled build failed: see above")'

.PHONY: no-compiler
no-compiler:
	@echo "NOTE: no C compiler (or no Python.h) for the compiled build: make test runs the suite"
	@echo "      pure (SIP_POLICY_PROXY_PURE=1). Install gcc (and python3-dev) to test it compiled."

run: venv
	$(VENV)/bin/sip-policy-proxy run --config $(CONFIG)

sysdeps:
	@command -v debconf-set-selections >/dev/null 2>&1 && \
	  echo "wireshark-common wireshark-common/install-setuid boolean false" | \
	  $(SUDO) debconf-set-selections || true
	$(call apt_ensure,$(TEST_SYSDEPS))

# pytest's exit code is the recipe's exit code: any failure (1), interruption (2), internal or
# usage error (3, 4) and "no tests collected" (5) fail `make test`, and so CI.
# SIP_POLICY_PROXY_EXPECT tells tests/unit/test_build.py and tests/system/test_build_processes.py
# which build must be running.
# JsSIP for the browser phone test, from tests/e2e/browser/package-lock.json (npm ci; its
# postinstall bundles it into dist/jssip.js), again when the package files change.
BROWSER_DIR   := tests/e2e/browser
BROWSER_STAMP := $(BROWSER_DIR)/node_modules/.sip-policy-proxy-installed

browser-deps: $(BROWSER_STAMP)

$(BROWSER_STAMP): $(BROWSER_DIR)/package.json $(BROWSER_DIR)/package-lock.json | sysdeps
	npm ci --prefix $(BROWSER_DIR) --no-audit --no-fund --loglevel=error
	@touch $@

# Without PYTEST_ARGS, the whole suite in two runs: the unit and conformance tests on both
# cores (pytest-xdist: they run in one process each and bind no fixed port), then the system
# and e2e tests one at a time (real servers, sipp and a browser on timers). Either failing
# fails the target. With PYTEST_ARGS, one run of what they name.
TEST_ENV := SIP_POLICY_PROXY_EXPECT=$(TEST_BUILD) $(if $(filter pure,$(TEST_BUILD)),SIP_POLICY_PROXY_PURE=1 )
SERIAL_TESTS := tests/system tests/e2e

test: sysdeps browser-deps venv compiled
ifeq ($(strip $(PYTEST_ARGS)),)
	$(TEST_ENV)$(VPY) -m pytest -q -n 2 tests/unit tests/conformance
	$(TEST_ENV)$(VPY) -m pytest -q $(SERIAL_TESTS)
else
	$(TEST_ENV)$(VPY) -m pytest -q $(PYTEST_ARGS)
endif

test-pure: sysdeps browser-deps venv
	SIP_POLICY_PROXY_EXPECT=pure SIP_POLICY_PROXY_PURE=1 $(VPY) -m pytest -q $(PYTEST_ARGS)

# Both run, and either failing fails the target (CI runs it before `make test`).
lint: venv
	@rc=0; \
	$(VENV)/bin/ruff check proxy tests bench setup.py || rc=1; \
	$(VENV)/bin/mypy || rc=1; \
	exit $$rc

bench-sysdeps:
	$(call apt_ensure,$(BENCH_SYSDEPS))

# matplotlib (the `bench` extra) draws results.png; run.py works without it, minus the plot.
bench: bench-sysdeps venv
	@$(VPY) -c 'import matplotlib' 2>/dev/null || \
	  $(VPY) -m pip install -q --disable-pip-version-check -e '.[bench]'
	$(VPY) bench/run.py $(BENCH_ARGS)

# Caches, benchmark output and the compiled build (build/ holds mypyc's C and the objects);
# .venv is kept (remove it by hand to start over).
clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache bench/results build $(BROWSER_DIR)/dist
	find proxy tests bench -name __pycache__ -type d -prune -exec rm -rf {} +
	find proxy -name '*.so' -delete
	rm -f ./sip_policy_proxy__mypyc*.so
