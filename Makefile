# rmem: the two commands a user needs are `make demo` and `make test`.
# Windows binaries are cross-compiled with MinGW-w64 and run under Wine;
# scripts/bootstrap installs and builds whatever is missing first.

WIN_CC   ?= x86_64-w64-mingw32-gcc
WIN      := build/windows
CFLAGS   := -O2 -std=c99 -Wall -Wextra -Wpedantic -Werror
WIN_LUA  := -I$(WIN)/include -L$(WIN)/lib -llua54
WIN_DLL  := $(WIN_CC) $(CFLAGS) -shared -DLUA_BUILD_AS_DLL

CORE_SRC := src/core.c src/backend_win.c
CORE_HDR := src/backend.h

.PHONY: all demo test windows lint clean

all: windows

demo:
	@scripts/bootstrap
	@scripts/lua-windows examples/demo.lua $(WIN)/bin/rmem-target.exe

test:
	@scripts/bootstrap
	@$(MAKE) -s lint
	@scripts/run-specs windows scripts/busted-windows spec; rc=$$?; scripts/wine-stop; exit $$rc

windows: $(WIN)/lib/rmem/core.dll $(WIN)/lib/testproc.dll $(WIN)/bin/rmem-target.exe

$(WIN)/lib/rmem/core.dll: $(CORE_SRC) $(CORE_HDR) $(WIN)/include/lua.h
	@mkdir -p $(@D)
	$(WIN_DLL) -o $@ $(CORE_SRC) $(WIN_LUA) -ladvapi32

$(WIN)/lib/testproc.dll: spec/support/testproc_win.c $(WIN)/include/lua.h
	$(WIN_DLL) -o $@ $< $(WIN_LUA)

$(WIN)/bin/rmem-target.exe: examples/target.c
	$(WIN_CC) $(CFLAGS) -o $@ $<

$(WIN)/include/lua.h:
	scripts/bootstrap

lint:
	luacheck -q lua spec examples rmem-scm-1.rockspec .busted .luacheckrc

clean:
	rm -rf build/windows/lib/rmem build/windows/lib/testproc.dll build/windows/bin/rmem-target.exe

