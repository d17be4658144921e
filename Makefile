# Two commands for a fresh machine with only python3 and make: `make run`, `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint bench image clean xenpaging xenshim

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,profile]'
	touch $(STAMP)

# The stack's main job: hv, pager and guest as three processes, paging for real, ~30 s.
run: $(STAMP)
	$(BIN)/xpemu up --duration 30

# The packages the type checker reads (sim/ only once it exists).
TYPED  := $(wildcard protocol transport hv pager guest sim stack)

# The whole suite (the slow stress tests stay behind XPEMU_SLOW=1) with its 15 slowest
# tests named, then the linter, the formatter (check only) and the type checker.
test: $(STAMP)
	$(BIN)/python -m pytest --durations=15
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy $(TYPED)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy $(TYPED)

bench: $(STAMP)
	$(BIN)/xpemu bench

# The container image, built offline from a wheelhouse (see docs/containers.md).
image: $(STAMP)
	$(BIN)/pip wheel --quiet . -w build/wheelhouse
	docker compose build || docker-compose build

# Xen's own xenpaging against hv (issue 22): build the shim for its four libraries and
# unpack the binary from Debian's package (downloaded, never installed; nothing of Xen's
# is kept in this repository).
XEN_PKG      := xen-utils-4.17
XENPAGING    := build/xenpaging/usr/lib/xen-4.17/bin/xenpaging

xenpaging: xenshim $(XENPAGING)

xenshim:
	$(MAKE) -C xenshim OUT=$(CURDIR)/build/xenshim

$(XENPAGING):
	rm -rf build/xenpaging && mkdir -p build/xenpaging/deb
	cd build/xenpaging/deb && { apt-get download $(XEN_PKG) 2>/dev/null || \
	    { apt-get update -qq >/dev/null 2>&1 || true; apt-get download $(XEN_PKG); } || \
	    { echo "make xenpaging: cannot download $(XEN_PKG) with apt-get" >&2; exit 1; }; }
	dpkg-deb --fsys-tarfile build/xenpaging/deb/$(XEN_PKG)_*.deb | \
	    tar -x -C build/xenpaging ./usr/lib/xen-4.17/bin/xenpaging
	test -x $@

clean:
	rm -rf $(VENV) build dist .pytest_cache
