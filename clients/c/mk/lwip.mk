# The board programs over lwIP's own TCP/IP stack (Debian: liblwip-dev, its
# unix port and tapif), each on a TAP device of its own:
#
#   make -C clients/c lwip     $(BUILD)/lwip/wwep-button
#
# The programs' sources are compiled unchanged; port/lwip/main.c takes the
# interface's flags and brings lwIP up (see there). wwep.c is compiled without
# WWEP_WITH_POSIX, so no Linux socket call is linked in.
LWIP_CFLAGS ?= $(shell pkg-config --cflags lwip 2>/dev/null || echo -I/usr/include/lwip)
LWIP_LIBS ?= $(shell pkg-config --libs lwip 2>/dev/null || echo -llwip) -lpthread
LWIP_DIR = $(BUILD)/lwip
LWIP_PORT = $(SRC)port/lwip
# The programs: their main is renamed and their POSIX transport is lwIP's.
LWIP_PROGRAM_DEFS = -DWWEP_WITH_POSIX $(TLS_DEFS) -Dmain=wwep_program_main \
	-Dwwep_posix_transport=wwep_lwip_posix_transport
LWIP_PORT_OBJS = $(LWIP_DIR)/wwep.o $(LWIP_DIR)/wwep_lwip.o $(LWIP_DIR)/tap.o $(LWIP_DIR)/main.o

$(LWIP_DIR):
	mkdir -p $@

$(LWIP_DIR)/wwep.o: $(SRC)wwep.c $(SRC)wwep.h | $(LWIP_DIR)
	$(CC) $(WARN) $(CFLAGS) $(TLS_DEFS) -c $< -o $@

$(LWIP_DIR)/wwep_lwip.o: $(LWIP_PORT)/wwep_lwip.c $(LWIP_PORT)/wwep_lwip.h $(SRC)wwep.h | $(LWIP_DIR)
	$(CC) $(WARN) $(CFLAGS) -I$(SRC) $(LWIP_CFLAGS) -c $< -o $@

$(LWIP_DIR)/tap.o: $(LWIP_PORT)/tap.c $(LWIP_PORT)/tap.h | $(LWIP_DIR)
	$(CC) $(WARN) $(CFLAGS) $(LWIP_CFLAGS) -c $< -o $@

$(LWIP_DIR)/main.o: $(LWIP_PORT)/main.c $(LWIP_PORT)/tap.h $(LWIP_PORT)/wwep_lwip.h $(SRC)wwep.h | $(LWIP_DIR)
	$(CC) $(WARN) $(CFLAGS) -DWWEP_WITH_POSIX -I$(SRC) $(LWIP_CFLAGS) -c $< -o $@

$(LWIP_DIR)/wwep-button: $(SRC)wwep-button.c $(SRC)wwep.h $(LWIP_PORT_OBJS)
	$(CC) $(WARN) $(CFLAGS) $(LWIP_PROGRAM_DEFS) $(SRC)wwep-button.c $(LWIP_PORT_OBJS) \
		$(TLS_LIBS) $(LWIP_LIBS) -o $@

lwip: $(LWIP_DIR)/wwep-button

.PHONY: lwip
