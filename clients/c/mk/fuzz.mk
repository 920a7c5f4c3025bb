# libFuzzer targets for the C parsers and the server's framer (clang with
# libFuzzer; Debian: clang, libclang-rt-14-dev):
#
#   make -C clients/c fuzz                    $(BUILD)/fuzz/fuzz_request, fuzz_reply, fuzz_framer
#   make -C clients/c fuzz-run FUZZ_TIME=30   each for FUZZ_TIME seconds; a crash fails
#
# fuzz_request: wwep_parse_request; fuzz_reply: wwep_parse_reply and its
# prefixes; fuzz_framer: the server fed one connection's bytes in pieces the
# input chooses (see each file for what it checks).
FUZZ_CC ?= clang
FUZZ_FLAGS = -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
FUZZ_TIME ?= 30
FUZZ_DIR = $(BUILD)/fuzz
FUZZ_TARGETS = fuzz_request fuzz_reply fuzz_framer
FUZZ_BINS = $(addprefix $(FUZZ_DIR)/,$(FUZZ_TARGETS))
FUZZ_LIB = $(addprefix $(SRC),$(addsuffix .c,wwep wwep_frame wwep_store wwep_server))

$(FUZZ_DIR):
	mkdir -p $@

$(FUZZ_BINS): $(FUZZ_DIR)/%: $(SRC)fuzz/%.c $(FUZZ_LIB) $(HEADERS) | $(FUZZ_DIR)
	$(FUZZ_CC) $(WARN) $(FUZZ_FLAGS) -I$(SRC) $< $(FUZZ_LIB) -o $@

fuzz: $(FUZZ_BINS)

# Each target from its own corpus folder (kept between runs); a crash leaves
# its input as $(FUZZ_DIR)/crash-* and fails. Prints the runs each made.
fuzz-run: $(FUZZ_BINS)
	@for t in $(FUZZ_TARGETS); do \
		mkdir -p $(FUZZ_DIR)/corpus/$$t; \
		$(FUZZ_DIR)/$$t -max_total_time=$(FUZZ_TIME) -print_final_stats=1 \
			-artifact_prefix=$(FUZZ_DIR)/ $(FUZZ_DIR)/corpus/$$t > $(FUZZ_DIR)/$$t.log 2>&1; \
		status=$$?; \
		runs=$$(awk '/stat::number_of_executed_units/ { print $$2 }' $(FUZZ_DIR)/$$t.log); \
		echo "fuzz $$t: $${runs:-?} runs in $(FUZZ_TIME) s"; \
		if [ $$status -ne 0 ]; then tail -40 $(FUZZ_DIR)/$$t.log; exit 1; fi; \
	done

.PHONY: fuzz fuzz-run
