# ldlm: staged training through make. Every stage takes EXP (experiments/<EXP>.py),
# PRESET (tiny | cpu | base), RUN (run name: outputs go to runs/$(RUN)/<stage>/) and
# SET (space-separated config overrides, e.g. SET="data.block_len=128 data.batch_size=64").
# A stage target always runs its stage; a stage whose input is missing first runs the
# stage that produces it.

PYTHON ?= .venv/bin/python
LDLM ?= .venv/bin/ldlm
EXP ?= bbc_news
PRESET ?= cpu
RUN ?= $(EXP)_$(PRESET)
SET ?=
# STEPS empty: the prior's own step count (16 for a diffusion prior, 1 for an energy head)
STEPS ?=
N ?= 8
SAMPLER ?= dpm++
SAMPLE_ARGS ?=
MAX_TOKENS ?= 128
PROMPT ?= The government has announced plans to
# pytest workers (pytest-xdist): on 2 cores one compiles XLA programs while the other runs
TEST_WORKERS ?= 2
RUN_DIR = runs/$(RUN)
STAGE_ARGS = --exp $(EXP) --preset $(PRESET) --run-dir $(RUN_DIR) $(foreach s,$(SET),--set $(s))

# The file each stage writes last: its presence means the stage finished.
DATA_DONE = $(RUN_DIR)/data/stats.json
TOKENIZER_DONE = $(RUN_DIR)/tokenizer/stats.json
VAE_DONE = $(RUN_DIR)/vae/eval.json
LATENTS_DONE = $(RUN_DIR)/latents/meta.json
DECODER_DONE = $(RUN_DIR)/decoder/eval.json
DIT_DONE = $(RUN_DIR)/dit/result.json
AR_DONE = $(RUN_DIR)/ar/result.json

.PHONY: help setup test test-slow demo data tokenizer vae latents decoder dit sample sample-prompt ar reference eval notebooks train-multiprocess clean-run

help:
	@echo "make setup      create .venv and install ldlm with its dev extra"
	@echo "make test       the CI test suite"
	@echo "make test-slow  the long tests kept out of CI"
	@echo "make demo       every stage on the cpu preset (runs/bbc_news_cpu)"
	@echo "make data       prepare the corpus, print split sizes        [EXP PRESET RUN SET]"
	@echo "make tokenizer  train sentencepiece, cut blocks of L tokens  [EXP PRESET RUN SET]"
	@echo "make vae        train + evaluate the TextVAE (resumes)       [EXP PRESET RUN SET]"
	@echo "make latents    encode the corpus with the trained VAE       [EXP PRESET RUN SET]"
	@echo "make decoder    fine-tune the decoder to see the previous block [EXP PRESET RUN SET]"
	@echo "make dit        train the latent DiT, dump samples (resumes) [EXP PRESET RUN SET]"
	@echo "make ar         train the autoregressive baseline (resumes)  [EXP PRESET RUN SET]"
	@echo "make reference  train the larger reference LM for gen-PPL    [EXP PRESET RUN SET]"
	@echo "make eval       ldlm vs the AR baseline vs real text         [EXP PRESET RUN SET]"
	@echo "make notebooks  execute notebooks/ on a run, outputs in runs/<RUN>/notebooks [RUN]"
	@echo "make sample     print samples and their speed  [RUN STEPS N SAMPLER MAX_TOKENS SAMPLE_ARGS]"
	@echo "make sample-prompt  two samples continuing PROMPT  [RUN STEPS SAMPLER MAX_TOKENS PROMPT]"

setup:
	python3.11 -m venv .venv
	.venv/bin/pip install --upgrade pip
	.venv/bin/pip install -e '.[dev]'

test:
	$(PYTHON) -m pytest -q -n $(TEST_WORKERS)

test-slow:
	$(PYTHON) -m pytest -q -m slow -n $(TEST_WORKERS)

demo: PRESET = cpu
demo: data tokenizer vae latents decoder dit sample sample-prompt

data:
	$(LDLM) data $(STAGE_ARGS)
$(DATA_DONE):
	$(LDLM) data $(STAGE_ARGS)

tokenizer: | $(DATA_DONE)
	$(LDLM) tokenizer $(STAGE_ARGS)
$(TOKENIZER_DONE): | $(DATA_DONE)
	$(LDLM) tokenizer $(STAGE_ARGS)

vae: | $(TOKENIZER_DONE)
	$(LDLM) vae $(STAGE_ARGS)
$(VAE_DONE): | $(TOKENIZER_DONE)
	$(LDLM) vae $(STAGE_ARGS)

latents: | $(VAE_DONE)
	$(LDLM) latents $(STAGE_ARGS)
$(LATENTS_DONE): | $(VAE_DONE)
	$(LDLM) latents $(STAGE_ARGS)

decoder: | $(LATENTS_DONE)
	$(LDLM) decoder $(STAGE_ARGS)
$(DECODER_DONE): | $(LATENTS_DONE)
	$(LDLM) decoder $(STAGE_ARGS)

dit: | $(LATENTS_DONE)
	$(LDLM) dit $(STAGE_ARGS)
$(DIT_DONE): | $(LATENTS_DONE)
	$(LDLM) dit $(STAGE_ARGS)

# e.g. make sample STEPS=64 N=4 SAMPLE_ARGS="--label sports --guidance 2"
sample: | $(DIT_DONE)
	$(LDLM) sample --run-dir $(RUN_DIR) $(if $(STEPS),--steps $(STEPS)) -n $(N) \
		--sampler $(SAMPLER) --max-tokens $(MAX_TOKENS) $(SAMPLE_ARGS)

sample-prompt: | $(DIT_DONE)
	$(LDLM) sample --run-dir $(RUN_DIR) $(if $(STEPS),--steps $(STEPS)) -n 2 \
		--sampler $(SAMPLER) --max-tokens $(MAX_TOKENS) --prompt "$(PROMPT)" $(SAMPLE_ARGS)

ar: | $(TOKENIZER_DONE)
	$(LDLM) ar $(STAGE_ARGS)
$(AR_DONE): | $(TOKENIZER_DONE)
	$(LDLM) ar $(STAGE_ARGS)

reference: | $(TOKENIZER_DONE)
	$(LDLM) reference $(STAGE_ARGS)

# SET="eval.reference=reference" scores with the reference LM (after make reference)
eval: | $(DIT_DONE) $(AR_DONE)
	$(LDLM) eval $(STAGE_ARGS)

notebooks: | $(DIT_DONE)
	$(LDLM) notebooks --run-dir $(RUN_DIR)

# The VAE stage as two local processes joined by jax.distributed (2 fake CPU devices each).
train-multiprocess: | $(TOKENIZER_DONE)
	$(PYTHON) -m ldlm.cli.multiprocess -n 2 --devices-per-process 2 --log-dir $(RUN_DIR)/logs \
		-- vae $(STAGE_ARGS)

clean-run:
	rm -rf $(RUN_DIR)
