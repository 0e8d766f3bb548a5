# Two commands: `make demo` and `make test`. Both create .venv and install the project on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/python -c "import torchvision.ops, torch_pruning, torch_geometric, hydra" # the torch build must match torchvision
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	test -f checkpoints/examples/resnet-digits/model.safetensors || $(BIN)/python train.py optim.epochs=15 overwrite=true logger=none
	$(BIN)/python prune.py

test: $(STAMP)
	WANDB_MODE=offline OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q  # small nets: one thread is fastest

test-all: $(STAMP)
	WANDB_MODE=offline OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m "slow or not slow"

clean:
	rm -rf $(VENV) outputs multirun wandb
