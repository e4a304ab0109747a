# kolos — top-level entry points. `make run` and `make test` each do the whole set-up on a fresh Debian 12 machine.
BUILD   ?= build
JOBS    ?= $(shell nproc)
KOLOS   := $(BUILD)/kolos
DATA    := .cache/data/moby-dick-byte
DATA_BPE := .cache/data/moby-dick-gpt2
DATA_SOTU := .cache/data/sotu-byte
STAMP   := .cache/setup.stamp

.PHONY: all setup build data run test bench clean

all: build

$(STAMP): scripts/setup.sh
	bash scripts/setup.sh
	@touch $@

setup: $(STAMP)

$(BUILD)/CMakeCache.txt: $(STAMP)
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release

build: $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j $(JOBS)

# The default token files (byte tokenizer over the demo corpus, validation = last 10%), and the larger corpus's.
data: build
	@test -f $(DATA)/meta.json || $(KOLOS) prepare --input .cache/moby-dick.txt --tokenizer byte --out $(DATA)
	@test -f $(DATA_BPE)/meta.json || $(KOLOS) prepare --input .cache/moby-dick.txt --tokenizer gpt2 --out $(DATA_BPE)
	@test -f $(DATA_SOTU)/meta.json || $(KOLOS) prepare --tokenizer byte --out $(DATA_SOTU) \
	  --input $$(ls .cache/npm/sotu/package/data/*.txt | LC_ALL=C sort)

run: data
	$(KOLOS) train

test: data
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

bench: build
	$(KOLOS) bench gemm
	$(KOLOS) bench train --pytorch

clean:
	rm -rf $(BUILD)
