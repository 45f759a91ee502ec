# The two set-up commands of the README: each builds .venv from nothing, then runs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast test-container bench lint lock browser protos clean docs docs-serve

# Exactly the locked versions, every wheel checked against its sha256 (requirements/test.txt, made by make lock),
# then this package itself, editable, adding nothing.
$(STAMP): pyproject.toml requirements/test.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes -r requirements/test.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/stacking demo --workdir artifacts/demo

# The import contracts (pyproject.toml: the stages as layers, the light serving path), then ruff's lint and format.
lint: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Resolve pyproject.toml's ranges again, to the newest versions they allow, into the three locks with hashes:
# test.txt (make install, CI: everything and the test tools), full.txt (the full image), serve.txt (the slim
# image: the serve extra alone). The last two take test.txt's versions. tests/test_lock.py checks they agree.
LOCK := --quiet --generate-hashes --universal --python-version 3.11
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --extra test --upgrade -c requirements/constraints.txt $(LOCK) \
	  -o requirements/test.txt
	$(BIN)/uv pip compile pyproject.toml -c requirements/test.txt $(LOCK) -o requirements/full.txt
	$(BIN)/python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['serve']))" \
	  | $(BIN)/uv pip compile - -c requirements/test.txt $(LOCK) -o requirements/serve.txt

# The gRPC messages the server loads, compiled from their .proto (tests/test_open_inference.py checks they match).
protos: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I app/open_inference \
	  --descriptor_set_out=app/open_inference/open_inference.binpb app/open_inference/open_inference.proto

# The page tests drive Debian's Chromium; installed here where we are root with apt,
# otherwise those tests are skipped and say why.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the page tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium missing and not installable here: page tests will be skipped"; fi; }

# The full gate, as CI runs it. Two workers (a fit leaves a core idle much of the time: 26 against 42 minutes
# serial on 2 cores); a file's tests stay on one worker, so a module's fixtures (a Ray cluster, a kfold bundle)
# are made once.
test: lint browser
	$(BIN)/pytest -q -n 2 --dist loadfile

# The edit-test loop: everything but the tests marked slow (fits, servers, Ray, Chromium, the benchmark harness).
test-fast: lint
	$(BIN)/pytest -q -m "not slow" -n auto

# The manual (mkdocs.yml, docs/): built strictly into site/ (a broken link, a missing page or an undocumented
# setting fails; tests/test_docs.py builds it in make test too), or served at http://127.0.0.1:8008 as you edit.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --strict --dev-addr 127.0.0.1:8008

# Builds the Dockerfile with podman and runs the image's own command (needs root and apt; see the script).
test-container: $(STAMP)
	tests/container/build_and_run.sh

# Speed against the hardware's limit (benchmarks/throughput.py): fits its bundle once (about 10 minutes
# on 2 cores), then prints the table and writes benchmarks/results/throughput.json.
BENCH := artifacts/bench-throughput
bench: $(STAMP)
	$(BIN)/python benchmarks/throughput.py $(if $(wildcard $(BENCH)/bundle/manifest.json),$(BENCH)/bundle,--make-bundle $(BENCH))

clean:
	rm -rf $(VENV) artifacts .pytest_cache site
