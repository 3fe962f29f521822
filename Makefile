# `make serve` and `make test` work on a fresh machine: each creates .venv and
# installs the project (pinned by constraints.txt) when pyproject or the
# constraints changed, and does nothing more when they did not.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# The real Claude Code CLI, pinned, for the end-to-end tests (tests/e2e).
CLAUDE_CLI_VERSION := 2.1.330
CLAUDE_CLI_DIR     := .cache/claude-cli
CLAUDE_CLI_STAMP   := $(CLAUDE_CLI_DIR)/.installed-$(CLAUDE_CLI_VERSION)

.PHONY: serve test lint bench install lock clean claude-cli doctor screenshot

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# The CLI it runs: CLAUDE_BIN (from the environment or .env), else `claude` on
# PATH, else the pinned release, installed here on first use.
serve: $(STAMP)
	@if [ -z "$$CLAUDE_BIN" ] && ! grep -qs '^[[:space:]]*CLAUDE_BIN=' .env \
	    && ! command -v claude >/dev/null 2>&1; then \
	  echo "make serve: no CLAUDE_BIN and no claude on PATH; using the pinned CLI $(CLAUDE_CLI_VERSION)"; \
	  $(MAKE) --no-print-directory claude-cli || exit 1; \
	  CLAUDE_BIN="$(abspath $(CLAUDE_CLI_DIR))/node_modules/.bin/claude"; export CLAUDE_BIN; \
	fi; \
	exec $(BIN)/claude-agent-service serve

# The real-CLI tests are skipped (with the reason) when npm cannot install
# it; CI sets REQUIRE_REAL_CLI=1, which turns that skip into a failure.
test: $(STAMP)
	@$(MAKE) --no-print-directory claude-cli \
	  || echo "make test: could not install the Claude CLI; the real-CLI tests will be skipped"
	$(BIN)/pytest -n 3 --dist worksteal

# The README's screenshot of a run's page, taken by the browser test.
screenshot: $(STAMP)
	UPDATE_DOCS=1 $(BIN)/pytest tests/ui/test_browser.py

# Is this set-up ready to serve? (the CLI, its credential, the workspace, ...)
doctor: $(STAMP)
	$(BIN)/claude-agent-service doctor

claude-cli: $(CLAUDE_CLI_STAMP)

# npm warns EBADENGINE on Node 20; the CLI is a native binary and runs.
$(CLAUDE_CLI_STAMP):
	npm install --prefix $(CLAUDE_CLI_DIR) --no-audit --no-fund --loglevel=error --prefer-offline \
	  @anthropic-ai/claude-code@$(CLAUDE_CLI_VERSION)
	$(CLAUDE_CLI_DIR)/node_modules/.bin/claude --version
	touch $@

lint: $(STAMP)
	$(BIN)/ruff check app tests bench
	$(BIN)/ruff format --check app tests bench
	$(BIN)/mypy

# The figures of BENCHMARKS.md; the chat overhead needs the pinned CLI (reported
# as an error without it). `.venv/bin/python -m bench --only NAME` runs one.
bench: $(STAMP)
	@$(MAKE) --no-print-directory claude-cli \
	  || echo "make bench: could not install the Claude CLI; chat_real will report an error"
	$(BIN)/python -m bench

# Re-pin every dependency to what is installed now (after changing pyproject).
lock: $(STAMP)
	$(BIN)/python -m pip freeze --exclude-editable --exclude pip > constraints.txt

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache
