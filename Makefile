# Two commands: `make demo` and `make test`. Both create .venv and install the project on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all install data clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/python -c "import torchvision.ops, torch_pruning, torch_geometric, hydra" # the torch build must match torchvision
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	test -f checkpoints/examples/resnet-digits/model.safetensors || $(BIN)/python train.py optim.epochs=15 overwrite=true logger=none
	$(BIN)/python prune.py

# Fashion-MNIST, the proving ground: Debian's package when root (apt), else torchvision's download.
FMNIST := /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz
data: $(STAMP)
	@if [ -f $(FMNIST) ] || [ -n "$$DATA_ROOT" -a -d "$$DATA_ROOT/fashion_mnist" ]; then echo "Fashion-MNIST is installed"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)); \
	else $(BIN)/python -c "from metaprune.data import get_data; print(get_data('fashion_mnist', download=True).info)"; fi

test: $(STAMP)
	WANDB_MODE=offline OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q  # small nets: one thread is fastest

test-all: $(STAMP)
	WANDB_MODE=offline OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m "slow or not slow"

clean:
	rm -rf $(VENV) outputs multirun wandb
