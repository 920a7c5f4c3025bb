# wwep — `make run` serves both ports in the foreground, `make test` runs every test.

CARGO ?= cargo
CERTS ?= certs
KEY ?= rsa
DEVICE ?=
ARGS ?=

PREFIX ?= /usr/local
DESTDIR ?=
SYSTEMD_DIR ?= /etc/systemd/system
SYSUSERS_DIR ?= /usr/lib/sysusers.d
CONF_DIR ?= /etc/wwep

.PHONY: all build release run test bench bench-fleet bench-events bench-partition bench-generator microbench certs clean install deb

all: build

build:
	$(CARGO) build

release:
	$(CARGO) build --release

# Makes certs/ca.pem, server.pem, client.pem and their keys; never overwrites.
# DEVICE=04FB also makes board-04FB.pem/.key, a client certificate with CN wwep-04FB.
certs:
	KEY=$(KEY) DEVICE=$(DEVICE) ./scripts/make-certs.sh $(CERTS)

$(CERTS)/server.pem $(CERTS)/server.key:
	KEY=$(KEY) ./scripts/make-certs.sh $(CERTS)

run: release $(CERTS)/server.pem $(CERTS)/server.key
	./target/release/wwep-server --cert $(CERTS)/server.pem --key $(CERTS)/server.key $(ARGS)

# Installs the tools the tests need when it can (root with apt), runs every
# test and ends with `tests: N passed, M failed, K skipped`; see docs/development.md.
test:
	CARGO=$(CARGO) ./scripts/test.sh

# Installs the binaries, the systemd unit (pointing at $(PREFIX)/bin) and an
# example environment file (kept if one exists).
install: release
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(SYSTEMD_DIR) $(DESTDIR)$(SYSUSERS_DIR) $(DESTDIR)$(CONF_DIR)
	install -m 0644 dist/wwep.sysusers $(DESTDIR)$(SYSUSERS_DIR)/wwep.conf
	install -m 0755 target/release/wwep-server target/release/wwep $(DESTDIR)$(PREFIX)/bin/
	sed 's|/usr/local/bin/wwep-server|$(PREFIX)/bin/wwep-server|' dist/wwep.service > $(DESTDIR)$(SYSTEMD_DIR)/wwep.service
	chmod 0644 $(DESTDIR)$(SYSTEMD_DIR)/wwep.service
	[ -e $(DESTDIR)$(CONF_DIR)/wwep.env ] || install -m 0644 dist/wwep.env $(DESTDIR)$(CONF_DIR)/wwep.env

# The Debian package target/debian/wwep_<version>_<arch>.deb from a release
# build; see docs/operations.md.
deb:
	CARGO=$(CARGO) ./scripts/make-deb.sh

# Our server against nginx's one-shot limit on this machine, then our own code
# alone (frame, parse, store, encode); see docs/performance.md.
bench: microbench
	./scripts/bench.sh
	./scripts/bench-fleet.sh
	./scripts/bench-events.sh

# Write latency during compaction with all 16,777,216 registers written; see
# scripts/bench-data.sh for its settings (REGISTERS, WRITERS, FSYNC, DIR, ...).
.PHONY: bench-data
bench-data:
	./scripts/bench-data.sh

# The memory store against Redis, one front end and two behind a balancer.
bench-fleet:
	./scripts/bench-fleet.sh

# /api/events: a write's A to its event (p99 under 50 ms, or FAIL), and the
# WWEP rate with no watcher, 10 stuck ones and 10 reading ones.
bench-events:
	./scripts/bench-events.sh

# tests/store/fleet_partition.rs with every scenario run longer (root: namespaces).
bench-partition:
	WWEP_FLEET_LONG=1 cargo test --test store fleet_partition:: -- --nocapture --test-threads=1

# Only the check that `wwep bench` keeps up with a minimal C generator on nginx.
bench-generator:
	GEN_ONLY=1 ./scripts/bench.sh

microbench:
	$(CARGO) bench --bench hot_path -- --warm-up-time 1 --measurement-time 3

clean:
	$(CARGO) clean
