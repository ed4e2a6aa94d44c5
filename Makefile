# rmem: the two commands a user needs are `make demo` and `make test`.
# Windows binaries are cross-compiled with MinGW-w64 and run under Wine;
# scripts/bootstrap installs and builds whatever is missing first.

WIN_CC   ?= x86_64-w64-mingw32-gcc
WIN      := build/windows
CFLAGS   := -O2 -std=c99 -Wall -Wextra -Wpedantic -Werror
WIN_LUA  := -I$(WIN)/include -L$(WIN)/lib -llua54
WIN_DLL  := $(WIN_CC) $(CFLAGS) -shared -DLUA_BUILD_AS_DLL

CORE_SRC := src/core.c src/scan.c src/ptrmap.c src/valscan.c src/backend_win.c src/threads_win.c src/buffer.c \
  src/freeze.c src/thread_win.c src/watch_win.c
CORE_HDR := src/backend.h src/scan.h src/ptrmap.h src/valscan.h src/core.h src/watch.h

# Linux: a plain build for users and the demo, and one under AddressSanitizer
# and UBSan for the specs.
LIN      := build/linux
LIN_ASAN := build/linux-asan
LUA_INC  ?= /usr/include/lua5.4
LIN_SRC  := src/core.c src/scan.c src/ptrmap.c src/valscan.c src/backend_linux.c src/inject_linux.c src/threads_linux.c \
  src/buffer.c src/freeze.c src/thread_linux.c src/watch_linux.c \
  src/watch_ptrace_linux.c
LIN_HDR  := src/backend.h src/scan.h src/ptrmap.h src/valscan.h src/inject_linux.h src/core.h src/watch.h src/watch_ptrace_linux.h
LIN_SO   := gcc $(CFLAGS) -fPIC -shared -pthread -I$(LUA_INC)
SAN      := -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

.PHONY: all demo demo-windows test windows linux lint clean bench bench-tools fuzz stress docs

all: linux

demo:
	@scripts/bootstrap linux
	@scripts/lua-linux examples/demo.lua $(LIN)/rmem-target

demo-windows:
	@scripts/bootstrap
	@scripts/lua-windows examples/demo.lua $(WIN)/bin/rmem-target.exe

test:
	@scripts/bootstrap
	@$(MAKE) -s lint
	@scripts/docs --check
	@scripts/check-rock
	@scripts/fuzz short
	@scripts/run-specs linux scripts/busted-linux spec; \
	  lrc=$$?; scripts/run-specs windows scripts/busted-windows spec; \
	  wrc=$$?; scripts/wine-stop; [ $$lrc -eq 0 ] && [ $$wrc -eq 0 ]

# the API reference (LDoc) into docs/; make test fails on a warning or a
# docs/ that differs from what the comments give
docs:
	@scripts/bootstrap linux
	@scripts/docs

# soak and fault runs on both platforms, and the native suite under valgrind
stress:
	@scripts/stress

# long fuzzing runs that grow fuzz/corpus (make test runs a short one)
fuzz:
	@scripts/bootstrap linux
	@scripts/fuzz long

# benchmarks: not part of test (bench/RESULTS.md holds a run)
bench:
	@scripts/bench

bench-tools: $(LIN)/rmem-bench-baseline $(WIN)/bin/rmem-bench-baseline.exe

$(LIN)/rmem-bench-baseline: bench/baseline.c
	gcc $(CFLAGS) -o $@ $<

$(WIN)/bin/rmem-bench-baseline.exe: bench/baseline.c
	$(WIN_CC) $(CFLAGS) -o $@ $<

linux: $(LIN)/rmem/core.so $(LIN_ASAN)/rmem/core.so $(LIN)/rmem/disasm.so $(LIN_ASAN)/rmem/disasm.so $(LIN)/testproc.so $(LIN_ASAN)/testproc.so $(LIN)/rmem-target \
	$(LIN)/rmem-target32 $(LIN)/rmem-payload.so $(LIN)/rmem-payload32.so \
	$(LIN)/rmem-target.syms $(LIN)/rmem-target-shifted.syms $(LIN)/rmem-target32.syms

$(LIN)/rmem/core.so: $(LIN_SRC) $(LIN_HDR)
	@mkdir -p $(@D)
	$(LIN_SO) -o $@ $(LIN_SRC)

$(LIN_ASAN)/rmem/core.so: $(LIN_SRC) $(LIN_HDR)
	@mkdir -p $(@D)
	$(LIN_SO) $(SAN) -o $@ $(LIN_SRC)

# rmem.disasm: Capstone (libcapstone-dev), a module of its own so the core
# builds without it
$(LIN)/rmem/disasm.so: src/disasm.c
	@mkdir -p $(@D)
	$(LIN_SO) -o $@ $< -lcapstone

$(LIN_ASAN)/rmem/disasm.so: src/disasm.c
	@mkdir -p $(@D)
	$(LIN_SO) $(SAN) -o $@ $< -lcapstone

# (the plain one is for the valgrind run of make stress)
$(LIN)/testproc.so: spec/support/testproc_linux.c
	$(LIN_SO) -o $@ $<

$(LIN_ASAN)/testproc.so: spec/support/testproc_linux.c
	$(LIN_SO) $(SAN) -o $@ $<

$(LIN)/rmem-target: examples/target.c
	gcc $(CFLAGS) -D_POSIX_C_SOURCE=200809L -pthread -rdynamic -o $@ $<

# the target "after an update" (code and data inserted before its functions),
# and the symbol tables of both, for the signature specs
$(LIN)/rmem-target-shifted: examples/target.c
	gcc $(CFLAGS) -DRMEM_TARGET_SHIFT -D_POSIX_C_SOURCE=200809L -pthread -o $@ $<

$(LIN)/%.syms: $(LIN)/%
	nm --defined-only $< > $@

# a 32-bit target, for the ia32 injection path (gcc-multilib)
$(LIN)/rmem-target32: examples/target.c
	gcc -m32 $(CFLAGS) -D_POSIX_C_SOURCE=200809L -pthread -rdynamic -o $@ $<

# a library to load into targets (examples/inject_library.lua)
$(LIN)/rmem-payload.so: examples/payload.c
	gcc $(CFLAGS) -fPIC -shared -o $@ $<

$(LIN)/rmem-payload32.so: examples/payload.c
	gcc -m32 $(CFLAGS) -fPIC -shared -o $@ $<

windows: $(WIN)/lib/rmem/core.dll $(WIN)/lib/rmem/disasm.dll $(WIN)/lib/testproc.dll $(WIN)/bin/rmem-target.exe \
	$(WIN)/bin/rmem-payload.dll $(WIN)/bin/rmem-target.syms $(WIN)/bin/rmem-target-shifted.syms

$(WIN)/lib/rmem/core.dll: $(CORE_SRC) $(CORE_HDR) $(WIN)/include/lua.h
	@mkdir -p $(@D)
	$(WIN_DLL) -o $@ $(CORE_SRC) $(WIN_LUA) -ladvapi32

# Capstone cross-compiled by scripts/bootstrap, linked in statically
$(WIN)/lib/rmem/disasm.dll: src/disasm.c $(WIN)/include/lua.h $(WIN)/lib/libcapstone.a
	@mkdir -p $(@D)
	$(WIN_DLL) -isystem $(WIN)/capstone/include -o $@ $< $(WIN_LUA) -l:libcapstone.a

$(WIN)/lib/libcapstone.a:
	scripts/bootstrap

$(WIN)/bin/rmem-payload.dll: examples/payload.c
	$(WIN_CC) $(CFLAGS) -shared -o $@ $<

$(WIN)/lib/testproc.dll: spec/support/testproc_win.c $(WIN)/include/lua.h
	$(WIN_DLL) -o $@ $< $(WIN_LUA)

$(WIN)/bin/rmem-target.exe: examples/target.c
	$(WIN_CC) $(CFLAGS) -o $@ $<

$(WIN)/bin/rmem-target-shifted.exe: examples/target.c
	$(WIN_CC) $(CFLAGS) -DRMEM_TARGET_SHIFT -o $@ $<

$(WIN)/bin/%.syms: $(WIN)/bin/%.exe
	x86_64-w64-mingw32-nm --defined-only $< > $@

$(WIN)/include/lua.h:
	scripts/bootstrap

lint:
	luacheck -q lua spec examples bench fuzz scripts/rmem rmem-*.rockspec config.ld .busted .luacheckrc

clean:
	rm -rf $(LIN) $(LIN_ASAN) build/windows/lib/rmem build/windows/lib/testproc.dll build/windows/bin/rmem-target.exe \
	  build/windows/bin/rmem-target-shifted.exe build/windows/bin/*.syms \
	  build/windows/bin/rmem-payload.dll build/windows/bin/rmem-bench-baseline.exe

