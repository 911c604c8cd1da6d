# Every task of the project. `make serve` and `make test` bootstrap a fresh machine.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TOOLS := $(CURDIR)/.tools/bin
PROTOC_GEN_GO := google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
PROTOC_GEN_GO_GRPC := google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
GO_MODULES := generated/go clients/go

.PHONY: help deps native generate check-generated lint types test test-python test-ts test-go serve bench clean

help:
	@echo "make serve            start the server on SQLite (./reckon.db, 127.0.0.1:50051)"
	@echo "make test             every check and test: generated code, lint, types, Python, TS, Go"
	@echo "make generate         regenerate generated/{python,ts,go} from proto/"
	@echo "make lint | types     ruff + buf lint/format/breaking | mypy strict, tsc, go vet"
	@echo "make bench            benchmarks (print figures)"
	@echo "make native           compile the writer's hot modules with mypyc (part of deps)"

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(TOOLS)/protoc-gen-go $(TOOLS)/protoc-gen-go-grpc &:
	mkdir -p $(TOOLS)
	GOBIN=$(TOOLS) go install $(PROTOC_GEN_GO)
	GOBIN=$(TOOLS) go install $(PROTOC_GEN_GO_GRPC)

# The modules of reckon_server/native.py, compiled by mypyc beside their sources (a stale
# build stops the package from importing: this rule replaces every build first).
NATIVE_SOURCES := $(shell $(PYTHON) server/reckon_server/native.py)
EXT_SUFFIX := $(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
NATIVE_BUILDS := $(addprefix server/,$(NATIVE_SOURCES:.py=$(EXT_SUFFIX)))

$(NATIVE_BUILDS) &: $(BIN)/.installed server/reckon_server/native.py \
		$(addprefix server/,$(NATIVE_SOURCES))
	find server -name '*.so' -not -path 'server/build/*' -delete
	cd server && MYPYPATH=../generated/python ../$(BIN)/mypyc --config-file ../pyproject.toml $(NATIVE_SOURCES) > build.log 2>&1 \
	  || { cat build.log; exit 1; }
	rm -f server/build.log
	@# Copied from build/ with the times they were built at, which may be older than a source.
	find server -name '*.so' -not -path 'server/build/*' -exec touch {} +

native: $(NATIVE_BUILDS)

deps: $(BIN)/.installed node_modules/.installed $(TOOLS)/protoc-gen-go $(TOOLS)/protoc-gen-go-grpc native

generate: deps
	rm -rf generated/python/reckon generated/ts generated/go/reckon
	$(BIN)/buf generate
	$(BIN)/buf generate --template buf.gen.ts-rpc.yaml

check-generated: generate
	@if ! git diff --quiet -- generated || [ -n "$$(git ls-files --others --exclude-standard generated)" ]; then \
	  git status --short -- generated; \
	  echo "generated/ is out of date with proto/: run 'make generate' and commit the result"; \
	  exit 1; \
	fi

lint: deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/buf lint
	$(BIN)/buf format --exit-code > /dev/null
	@# Against every earlier version of the contract, not just the last commit's: a field
	@# added in one commit and removed a few later would otherwise pass.
	@earlier=$$(git rev-parse --verify --quiet HEAD~1 > /dev/null && git log --format=%H HEAD~1 -- proto buf.yaml); \
	for rev in $$earlier; do \
	  git cat-file -e $$rev:buf.yaml 2> /dev/null || continue; \
	  $(BIN)/buf breaking --against ".git#ref=$$rev" || { echo "buf breaking: a change breaks the contract of $$rev"; exit 1; }; \
	done; \
	[ -n "$$earlier" ] || echo "buf breaking: no earlier version of the contract to compare against"

types: deps
	$(BIN)/mypy server clients/python
	npx tsc -p clients/ts --noEmit
	for m in $(GO_MODULES); do (cd $$m && go vet ./...); done

test-python: deps
	$(BIN)/pytest

# The TS and Go suites run against a live server from tests/cross (part of test-python);
# here they are only built and checked.
test-ts: deps
	npx tsc -p clients/ts --noEmit

test-go: deps
	for m in $(GO_MODULES); do (cd $$m && go build ./... && go vet ./...); done

test: check-generated lint types test-python test-ts test-go

serve: deps
	$(BIN)/reckon serve

bench: deps
	$(BIN)/python -m tests.perf.run

clean:
	rm -rf $(VENV) node_modules .tools .mypy_cache .ruff_cache .pytest_cache server/build
	find server -name '*.so' -delete
