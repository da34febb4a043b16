# ngx_ipc: build, test, demo.
#
#   make            build/ngx_ipc_module.so, against Debian's nginx-dev
#   make demo       install what is missing, build, start the demo on 127.0.0.1
#   make test       install what is missing, build, run every test
#   make help       the other targets

NGX_SRC   ?= /usr/share/nginx/src
BUILD     := build
MODULE    := $(BUILD)/ngx_ipc_module.so
NGX_BUILD := $(BUILD)/nginx
CORE_SRCS := $(wildcard core/include/ngx_ipc/*.h core/src/*.cpp)
GLUE_SRCS := $(wildcard src/*.cpp src/*.h lib/ngx/*.lua lib/ngx/ipc/*.lua)
DEMO_PORT ?= 8080
PYTEST    ?= /usr/bin/python3 -m pytest

.PHONY: all deps demo demo-stop test test-core test-nginx check-sanitizers \
        fuzz soak format clean help bench

all: $(MODULE)

help:
	@sed -n 's/^#   //p' $(MAKEFILE_LIST)
	@echo "make deps         apt-get install what the build and tests need"
	@echo "make test-core    GoogleTest suite of the C++ core"
	@echo "make test-nginx   integration tests against real nginx (t/)"
	@echo "make check-sanitizers  core tests under ASan+UBSan and TSan"
	@echo "make demo-stop    stop the demo nginx"
	@echo "make fuzz         libFuzzer on the record decoder (FUZZ_SECONDS=30)"
	@echo "make soak         50 reloads, 20 worker kills, 10 min of fuzzing"
	@echo "make bench        floors, ngx_ipc and the baselines: docs/BENCHMARKS.md"
	@echo "make format       clang-format the C++ core"

deps:
	@scripts/install-deps.sh

# nginx's own configure, with Debian's flags, in a copy of nginx-dev's tree.
$(NGX_BUILD)/objs/Makefile: config
	@test -d $(NGX_SRC) || { echo "$(NGX_SRC) missing: run 'make deps'"; exit 1; }
	rm -rf $(NGX_BUILD) && mkdir -p $(BUILD) && cp -r $(NGX_SRC)/. $(NGX_BUILD)
	cd $(NGX_BUILD) && bash -c 'source ./conf_flags && \
	    ./configure "$${NGX_CONF_FLAGS[@]}" --add-dynamic-module=$(CURDIR)' \
	    > ../configure.log 2>&1 || { tail -20 ../configure.log; exit 1; }

# installed with a rename, so a running nginx never maps a half-copied file
$(MODULE): $(NGX_BUILD)/objs/Makefile $(CORE_SRCS) $(GLUE_SRCS)
	$(MAKE) -C $(NGX_BUILD) -f objs/Makefile modules
	cp $(NGX_BUILD)/objs/ngx_ipc_module.so $@.tmp && mv -f $@.tmp $@

demo: deps $(MODULE)
	@examples/demo.sh start $(DEMO_PORT)

demo-stop:
	@examples/demo.sh stop

# everything: the core (plain, ASan+UBSan, TSan), real nginx, a short fuzz run
test: deps $(MODULE) test-core test-nginx check-sanitizers fuzz

test-core:
	cmake -S core -B $(BUILD)/core -DCMAKE_BUILD_TYPE=RelWithDebInfo > /dev/null
	cmake --build $(BUILD)/core -j2
	ctest --test-dir $(BUILD)/core -j2 --output-on-failure

test-nginx: $(MODULE)
	NGX_IPC_MODULE=$(CURDIR)/$(MODULE) $(PYTEST) -q t/

check-sanitizers:
	cmake -S core -B $(BUILD)/core-address -DNGX_IPC_SANITIZE=address > /dev/null
	cmake --build $(BUILD)/core-address -j2
	ctest --test-dir $(BUILD)/core-address -j2 --output-on-failure
	cmake -S core -B $(BUILD)/core-thread -DNGX_IPC_SANITIZE=thread > /dev/null
	cmake --build $(BUILD)/core-thread -j2
	ctest --test-dir $(BUILD)/core-thread -j2 --output-on-failure

# the long variants: 50 reloads, 20 kills, 10 minutes of fuzzing
soak: $(MODULE)
	NGX_IPC_MODULE=$(CURDIR)/$(MODULE) NGX_IPC_RELOADS=50 NGX_IPC_KILLS=20 \
	    $(PYTEST) -q t/test_reload.py t/test_crash.py
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

clean:
	rm -rf $(BUILD)

# floors, ngx_ipc and every bench/baselines/*: docs/BENCHMARKS.md, docs/benchmarks.png
bench: $(MODULE)
	/usr/bin/python3 bench/run.py
