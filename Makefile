# vl_attention: `make demo` runs the demo, `make test` builds with colcon and runs every test.
SHELL := /bin/bash
ENV := source scripts/env.sh &&

.PHONY: setup demo test lint clean

setup:
	bash scripts/setup_env.sh

demo: setup
	$(ENV) PYTHONPATH=$(CURDIR):$$PYTHONPATH python -m vl_attention.cli demo

test: setup
	$(ENV) colcon build --base-paths . && \
	$(ENV) source install/setup.bash && \
	colcon test --base-paths . --return-code-on-test-failure --event-handlers console_direct+ \
	  --pytest-args -ra --durations=15 && \
	colcon test-result --verbose

lint: setup
	$(ENV) flake8 vl_attention training launch test benchmarks

clean:
	rm -rf build install log
