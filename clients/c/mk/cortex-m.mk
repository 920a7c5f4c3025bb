# The client core and the server core built for a Cortex-M4 (no mbedTLS, no
# POSIX), checked for what a bare-metal newlib build provides, and the size
# table of docs/board-library.md (Debian: gcc-arm-none-eabi,
# libnewlib-arm-none-eabi):
#
#   make -C clients/c cortex-m     $(BUILD)/cortex-m/*.o, .su, .ci; fails on
#                                  malloc, free, printf or any symbol outside
#                                  mk/bare-metal-check.sh's allow-list, then
#                                  links them with newlib-nano (core.elf)
#   make -C clients/c size-table   the table: flash, RAM and worst stack use
ARM_CC ?= arm-none-eabi-gcc
ARM_NM ?= arm-none-eabi-nm
ARM_SIZE ?= arm-none-eabi-size
CM_DIR = $(BUILD)/cortex-m
CM_FLAGS = -mcpu=cortex-m4 -mthumb -Os -ffunction-sections -fdata-sections
# Each object's stack frames (.su) and call graph with them (.ci), for the
# worst stack use of each public function (mk/stack.awk).
CM_STACK = -fstack-usage -fcallgraph-info=su
CM_CORE = wwep wwep_frame wwep_store wwep_server
CM_OBJS = $(addprefix $(CM_DIR)/,$(addsuffix .o,$(CM_CORE)))

$(CM_DIR):
	mkdir -p $@

$(CM_OBJS): $(CM_DIR)/%.o: $(SRC)%.c $(HEADERS) $(BUILD)/flags | $(CM_DIR)
	$(ARM_CC) $(WARN) $(CM_FLAGS) $(CM_STACK) -DWWEP_SERVER_SLOTS=$(SLOTS) -c $< -o $@

# The check, then a real link against newlib-nano with no system calls (no
# nosys specs, no start files), every public function kept: a need for _sbrk,
# _write or anything else the C library cannot give by itself fails here too.
cortex-m: $(CM_OBJS)
	sh $(SRC)mk/bare-metal-check.sh $(ARM_NM) $(CM_OBJS)
	$(ARM_CC) $(CM_FLAGS) --specs=nano.specs -nostartfiles -Wl,--gc-sections \
		-Wl,-e,wwep_server_step \
		$$($(ARM_NM) -g --defined-only $(CM_OBJS) | awk 'NF == 3 && $$2 == "T" { printf " -Wl,-u,%s", $$3 }') \
		$(CM_OBJS) -o $(CM_DIR)/core.elf

# The state a caller owns, measured as objects of that type: the store's
# table at N = 400, a server with SLOTS and with 1 slot, a reply.
$(CM_DIR)/state.o: $(HEADERS) | $(CM_DIR)
	printf '#include "wwep_server.h"\nwwep_entry store_table_400[400];\nwwep_store store;\nwwep_server server;\nwwep_reply reply;\n' | \
		$(ARM_CC) $(WARN) $(CM_FLAGS) -DWWEP_SERVER_SLOTS=$(SLOTS) -I$(SRC) -x c -c - -o $@
$(CM_DIR)/state1.o: $(HEADERS) | $(CM_DIR)
	printf '#include "wwep_server.h"\nwwep_server server_1_slot;\n' | \
		$(ARM_CC) $(WARN) $(CM_FLAGS) -DWWEP_SERVER_SLOTS=1 -I$(SRC) -x c -c - -o $@

# The mbedTLS transports have no Cortex-M build here (Debian packages no
# mbedTLS for it): they are measured on this PC, -Os, without POSIX.
SIZE_PC = $(BUILD)/size-pc
$(SIZE_PC):
	mkdir -p $@
$(SIZE_PC)/wwep_core.o: $(SRC)wwep.c $(HEADERS) | $(SIZE_PC)
	$(CC) $(WARN) -Os -ffunction-sections -fdata-sections -c $< -o $@
$(SIZE_PC)/wwep_tls.o: $(SRC)wwep.c $(HEADERS) | $(SIZE_PC)
	$(CC) $(WARN) -Os -ffunction-sections -fdata-sections $(CM_STACK) -DWWEP_WITH_MBEDTLS -c $< -o $@
$(SIZE_PC)/wwep_tls_server.o: $(SRC)wwep_tls_server.c $(HEADERS) $(BUILD)/flags | $(SIZE_PC)
	$(CC) $(WARN) -Os -ffunction-sections -fdata-sections $(CM_STACK) -DWWEP_WITH_MBEDTLS \
		-DWWEP_SERVER_SLOTS=$(SLOTS) -c $< -o $@
$(SIZE_PC)/state.o: $(HEADERS) | $(SIZE_PC)
	printf '#include "wwep_server.h"\nwwep_tls tls_client;\nwwep_tls_server tls_server;\nwwep_tls_conn tls_conn;\n' | \
		$(CC) $(WARN) -Os -DWWEP_WITH_MBEDTLS -DWWEP_SERVER_SLOTS=$(SLOTS) -I$(SRC) -x c -c - -o $@

size-table: cortex-m $(CM_DIR)/state.o $(CM_DIR)/state1.o $(SIZE_PC)/wwep_core.o \
            $(SIZE_PC)/wwep_tls.o $(SIZE_PC)/wwep_tls_server.o $(SIZE_PC)/state.o
	@ARM_CC="$(ARM_CC)" ARM_NM="$(ARM_NM)" ARM_SIZE="$(ARM_SIZE)" CC="$(CC)" SLOTS=$(SLOTS) \
		sh $(SRC)mk/size-table.sh $(CM_DIR) $(SIZE_PC)

.PHONY: cortex-m size-table
