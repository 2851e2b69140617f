# The two quick-start commands: `make demo` (the main job) and `make test`. Both set up what they need.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test peer clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(BIN)/deepcluster demo --out runs/demo

test: setup
	@bash scripts/setup_browser.sh
	$(BIN)/python -m pytest -q

# The MMSelfSup 1.0.0 comparison setting (10k Fashion-MNIST at 64 px, ResNet-18, k=100, 3 epochs).
peer: setup
	$(BIN)/deepcluster pretrain --preset mmselfsup-peer --out runs/mmselfsup-peer

clean:
	rm -rf runs
