# ngx_ipc: build, test, demo.
#
#   make            build/ngx_ipc_module.so, against Debian's nginx-dev
#   make demo       install what is missing, build, start the demo on 127.0.0.1
#   make test       install what is missing, build, run every test, on
#                   Debian 12 (this machine) and Debian 13 (a chroot)
#   make help       the other targets
#
# Another nginx (README.md, "Other nginx builds"):
#   make NGX_SRC=/path/to/nginx-source [NGX_CONF_FLAGS="..."] [BUILD=build/x]
# with the flags of `$NGX_IPC_NGINX -V` when NGX_CONF_FLAGS is not given.

NGX_SRC   ?= /usr/share/nginx/src
BUILD     ?= build
MODULE    := $(BUILD)/ngx_ipc_module.so
NGX_BUILD := $(BUILD)/nginx
CORE_SRCS := $(wildcard core/include/ngx_ipc/*.h core/src/*.cpp)
GLUE_SRCS := $(wildcard src/*.cpp src/*.h lib/ngx/*.lua lib/ngx/ipc/*.lua lib/ngx/ipc/*/*.lua)
DEMO_PORT ?= 8080
PYTEST    ?= /usr/bin/python3 -m pytest

.PHONY: all deps demo demo-stop demo-cluster demo-cluster-stop test test-core test-nginx \
        check-sanitizers fuzz soak format clean help bench test-trixie bench-trixie \
        deb test-packages

all: $(MODULE)

help:
	@sed -n 's/^#   //p' $(MAKEFILE_LIST)
	@echo "make deps         apt-get install what the build and tests need"
	@echo "make test-core    GoogleTest suite of the C++ core"
	@echo "make test-nginx   integration tests against real nginx (t/)"
	@echo "make deb          the Debian package libnginx-mod-http-ipc, in build/deb/"
	@echo "make test-packages  the package installed in clean Debian 12 and 13 roots: t/ there"
	@echo "make test-trixie  t/ in a Debian 13 root, with its nginx and lua module"
	@echo "make bench-trixie make bench's table in that Debian 13 root"
	@echo "make check-sanitizers  core tests under ASan+UBSan and TSan"
	@echo "make demo-stop    stop the demo nginx"
	@echo "make demo-cluster Redis and two nginx nodes: a purge reaches every worker of both"
	@echo "make demo-cluster-stop  stop them"
	@echo "make fuzz         libFuzzer on the record decoder (FUZZ_SECONDS=30)"
	@echo "make soak         50 reloads, 20 worker kills, 10 min of fuzzing"
	@echo "make bench        floors, ngx_ipc, the baselines, the compat APIs: docs/BENCHMARKS*.md"
	@echo "make format       clang-format the C++ core"

deps:
	@scripts/install-deps.sh

# What configure's flags come from, kept in a file rewritten only when it
# changes: `make NGX_SRC=...` configures again, a second `make` does not.
CONFIGURE_KEY := $(NGX_SRC) | $(NGX_CONF_FLAGS) | \
                 $(if $(wildcard $(NGX_SRC)/conf_flags),,$(NGX_IPC_NGINX))
ifneq ($(CONFIGURE_KEY),$(file <$(BUILD)/configure.key))
$(shell mkdir -p $(BUILD))
$(file >$(BUILD)/configure.key,$(CONFIGURE_KEY))
endif

# nginx's own configure, in a copy of the tree (Debian's nginx-dev by
# default, with Debian's flags): scripts/nginx-configure.sh
$(NGX_BUILD)/objs/Makefile: config scripts/nginx-configure.sh $(BUILD)/configure.key
	@test -d $(NGX_SRC) || { echo "$(NGX_SRC) missing: run 'make deps'"; exit 1; }
	scripts/nginx-configure.sh $(NGX_SRC) $(NGX_BUILD) > $(BUILD)/configure.log 2>&1 \
	    || { tail -20 $(BUILD)/configure.log; exit 1; }

# installed with a rename, so a running nginx never maps a half-copied file
$(MODULE): $(NGX_BUILD)/objs/Makefile $(CORE_SRCS) $(GLUE_SRCS)
	$(MAKE) -C $(NGX_BUILD) -f objs/Makefile modules
	cp $(NGX_BUILD)/objs/ngx_ipc_module.so $@.tmp && mv -f $@.tmp $@

demo: deps $(MODULE)
	@examples/demo.sh start $(DEMO_PORT)

demo-stop:
	@examples/demo.sh stop

# Redis and two nginx nodes linked by ipc_cluster, on 127.0.0.1:8081 and :8082
demo-cluster: deps $(MODULE)
	@examples/cluster/demo.sh start

demo-cluster-stop:
	@examples/cluster/demo.sh stop

# everything: the core (plain, ASan+UBSan, TSan), a short fuzz run, and
# real nginx: t/ against the package installed on Debian 12 and on Debian 13
# (test-nginx, t/ against the module built from source here, is the quick
# loop while developing)
test: deps $(MODULE) test-core check-sanitizers fuzz test-packages

test-core:
	cmake -S core -B $(BUILD)/core -DCMAKE_BUILD_TYPE=RelWithDebInfo > /dev/null
	cmake --build $(BUILD)/core -j2
	ctest --test-dir $(BUILD)/core -j2 --output-on-failure

test-nginx: $(MODULE)
	NGX_IPC_MODULE=$(abspath $(MODULE)) $(PYTEST) -q t/

# a Debian 13 root in build/trixie (made once, needs root): scripts/trixie.sh
test-trixie:
	scripts/trixie.sh test

bench-trixie:
	scripts/trixie.sh bench

# libnginx-mod-http-ipc for this machine's nginx (debian/, lintian-checked)
deb:
	scripts/deb.sh $(BUILD)/deb

# build, install in a clean root, nginx -t, a broadcast, t/, purge: per release
test-packages:
	scripts/package-test.sh bookworm
	scripts/package-test.sh trixie

check-sanitizers:
	cmake -S core -B $(BUILD)/core-address -DNGX_IPC_SANITIZE=address > /dev/null
	cmake --build $(BUILD)/core-address -j2
	ctest --test-dir $(BUILD)/core-address -j2 --output-on-failure
	cmake -S core -B $(BUILD)/core-thread -DNGX_IPC_SANITIZE=thread > /dev/null
	cmake --build $(BUILD)/core-thread -j2
	ctest --test-dir $(BUILD)/core-thread -j2 --output-on-failure

# the long variants: 50 reloads, 20 kills, 10 minutes of fuzzing
soak: $(MODULE)
	NGX_IPC_MODULE=$(abspath $(MODULE)) NGX_IPC_RELOADS=50 NGX_IPC_KILLS=20 \
	    NGX_IPC_OVERLAP_RELOADS=60 \
	    $(PYTEST) -q t/test_reload.py t/test_crash.py t/test_reload_bridge.py
	$(MAKE) fuzz FUZZ_SECONDS=600

# libFuzzer on the record decoder (core/fuzz); FUZZ_SECONDS=N for longer.
FUZZ_SECONDS ?= 30
fuzz:
	mkdir -p $(BUILD)/fuzz/corpus
	clang++ -std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined -Icore/include \
	    core/fuzz/record_fuzz.cpp $(wildcard core/src/*.cpp) \
	    -o $(BUILD)/fuzz/record_fuzz
	$(BUILD)/fuzz/record_fuzz -max_total_time=$(FUZZ_SECONDS) -max_len=8192 \
	    -print_final_stats=1 $(BUILD)/fuzz/corpus 2>&1 | tail -12

format:
	clang-format -i core/include/ngx_ipc/*.h core/src/*.cpp core/test/*.cpp

# --one-file-system, and a refusal while a trixie run has things mounted
# in its root: never a delete through /proc or /sys
clean:
	@! grep -qs " $(abspath $(BUILD))/" /proc/mounts || \
	    { echo "mounted under $(BUILD)/: scripts/trixie.sh umount"; exit 1; }
	rm -rf --one-file-system $(BUILD)

# floors, ngx_ipc and every bench/baselines/*: docs/BENCHMARKS.md, docs/benchmarks.png
# NGX_LUA_IPC_MODULE=/path/to/ngx_lua_ipc_module.so (built by hand from
# slact/ngx_lua_ipc) adds it to bench/scale.py's broadcast table
bench: $(MODULE)
	/usr/bin/python3 bench/run.py
	/usr/bin/python3 bench/scale.py
	/usr/bin/python3 bench/compat/run.py
