# Responsible Steering: developer entry points. Everything runs against a real
# ComfyUI 0.3.75 installed by `make setup` (idempotent; warm re-runs take seconds).
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup test demo serve bench workflows clean efficacy

setup:
	@bash scripts/setup.sh

test: setup
	.venv/bin/pytest -p no:cacheprovider $(PYTEST_ARGS)

demo: setup
	$(PY) scripts/demo.py

serve: setup
	$(PY) scripts/demo.py --serve

bench: setup
	$(PY) benchmarks/run.py

efficacy: setup
	$(PY) benchmarks/toyworld/efficacy.py

workflows: setup
	$(PY) scripts/build_workflows.py

clean:
	rm -rf .venv .cache out
