# Responsible Steering: developer entry points. Everything runs against a real
# ComfyUI 0.3.75 installed by `make setup` (idempotent; warm re-runs take seconds).
# Tools run as modules from the repository root (devtools/, benchmarks/); nothing edits sys.path
# but devtools/comfy_env.py, which puts ComfyUI's folder first.
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup test test-fast demo serve bench workflows clean efficacy

setup:
	@bash scripts/setup.sh

test: setup
	.venv/bin/pytest -p no:cacheprovider $(PYTEST_ARGS)

demo: setup
	$(PY) -m devtools.demo

serve: setup
	$(PY) -m devtools.demo --serve

bench: setup
	$(PY) -m benchmarks.run

efficacy: setup
	$(PY) -m benchmarks.toyworld.efficacy

workflows: setup
	$(PY) -m devtools.node_sizes
	$(PY) -m devtools.build_workflows

clean:
	rm -rf .venv .cache out

test-fast: setup
	.venv/bin/pytest -p no:cacheprovider -m fast $(PYTEST_ARGS)
