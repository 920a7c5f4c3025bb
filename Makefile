# wwep — `make run` serves both ports in the foreground, `make test` runs every test.

CARGO ?= cargo
CERTS ?= certs
KEY ?= rsa
ARGS ?=

.PHONY: all build release run test certs clean

all: build

build:
	$(CARGO) build

release:
	$(CARGO) build --release

# Makes certs/ca.pem, server.pem, client.pem and their keys; never overwrites.
certs:
	KEY=$(KEY) ./scripts/make-certs.sh $(CERTS)

$(CERTS)/server.pem $(CERTS)/server.key:
	KEY=$(KEY) ./scripts/make-certs.sh $(CERTS)

run: release $(CERTS)/server.pem $(CERTS)/server.key
	./target/release/wwep-server --cert $(CERTS)/server.pem --key $(CERTS)/server.key $(ARGS)

test:
	$(CARGO) test --all-targets

clean:
	$(CARGO) clean
