# The board programs over lwIP's own TCP/IP stack (Debian: liblwip-dev, its
# unix port and tapif), each on a TAP device of its own:
#
#   make -C clients/c lwip     $(BUILD)/lwip/wwep-button, $(BUILD)/lwip/wwep-board-server
#
# The programs' sources are compiled unchanged; port/lwip/main.c takes the
# interface's flags and brings lwIP up (see there). wwep.c is compiled without
# WWEP_WITH_POSIX, so no Linux socket call is linked in.
LWIP_CFLAGS ?= $(shell pkg-config --cflags lwip 2>/dev/null || echo -I/usr/include/lwip)
LWIP_LIBS ?= $(shell pkg-config --libs lwip 2>/dev/null || echo -llwip) -lpthread
LWIP_DIR = $(BUILD)/lwip
LWIP_PORT = $(SRC)port/lwip
LWIP_DEFS = $(TLS_DEFS) -DWWEP_SERVER_SLOTS=$(SLOTS)
# The programs: their main is renamed, their POSIX transport, listener and
# clock are lwIP's.
LWIP_PROGRAM_DEFS = -DWWEP_WITH_POSIX $(LWIP_DEFS) -Dmain=wwep_program_main \
	-Dwwep_posix_transport=wwep_lwip_posix_transport \
	-Dwwep_posix_listener_init=wwep_lwip_posix_listener_init \
	-Dwwep_posix_now_ms=wwep_lwip_now_ms
# The library without its POSIX parts, and the port.
LWIP_LIB = wwep wwep_frame wwep_store wwep_server $(if $(TLS_DEFS),wwep_tls_server)
LWIP_PORT_OBJS = $(addprefix $(LWIP_DIR)/,$(addsuffix .o,$(LWIP_LIB) wwep_lwip tap main))

$(LWIP_DIR):
	mkdir -p $@

$(addprefix $(LWIP_DIR)/,$(addsuffix .o,$(LWIP_LIB))): $(LWIP_DIR)/%.o: $(SRC)%.c $(HEADERS) $(BUILD)/flags | $(LWIP_DIR)
	$(CC) $(WARN) $(CFLAGS) $(LWIP_DEFS) -c $< -o $@

$(LWIP_DIR)/wwep_lwip.o: $(LWIP_PORT)/wwep_lwip.c $(LWIP_PORT)/wwep_lwip.h $(HEADERS) $(BUILD)/flags | $(LWIP_DIR)
	$(CC) $(WARN) $(CFLAGS) $(LWIP_DEFS) -I$(SRC) $(LWIP_CFLAGS) -c $< -o $@

$(LWIP_DIR)/tap.o: $(LWIP_PORT)/tap.c $(LWIP_PORT)/tap.h | $(LWIP_DIR)
	$(CC) $(WARN) $(CFLAGS) $(LWIP_CFLAGS) -c $< -o $@

$(LWIP_DIR)/main.o: $(LWIP_PORT)/main.c $(LWIP_PORT)/tap.h $(LWIP_PORT)/wwep_lwip.h $(HEADERS) $(BUILD)/flags | $(LWIP_DIR)
	$(CC) $(WARN) $(CFLAGS) -DWWEP_WITH_POSIX $(LWIP_DEFS) -I$(SRC) $(LWIP_CFLAGS) -c $< -o $@

$(LWIP_DIR)/wwep-button $(LWIP_DIR)/wwep-board-server: $(LWIP_DIR)/%: $(SRC)%.c $(HEADERS) $(LWIP_PORT_OBJS)
	$(CC) $(WARN) $(CFLAGS) $(LWIP_PROGRAM_DEFS) $< $(LWIP_PORT_OBJS) $(TLS_LIBS) $(LWIP_LIBS) -o $@

lwip: $(LWIP_DIR)/wwep-button $(LWIP_DIR)/wwep-board-server

.PHONY: lwip
