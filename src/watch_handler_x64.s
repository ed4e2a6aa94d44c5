# The vectored exception handler that p:watch writes into a Windows target
# (lua/rmem/watch.lua holds its bytes; regenerate them after a change with
#   x86_64-w64-mingw32-as -o h.o src/watch_handler_x64.s &&
#   x86_64-w64-mingw32-objcopy -O binary -j .text h.o h.bin && xxd -p h.bin
# without the trailing 90s, COFF's padding; spec/26-watch_handler_spec.lua
# checks that they agree). LONG handler(EXCEPTION_POINTERS *ep),
# position-independent; its data at handler+DATA (layout: watch.lua).
# CONTEXT: ContextFlags 0x30, EFlags 0x44, Dr0-3 0x48-0x60, Dr6 0x68,
# Dr7 0x70, Rip 0xF8.
        .intel_syntax noprefix
        .set DATA, 512
        .set RING, 32768
        .text
handler:
        mov rax, [rcx]
        cmp dword ptr [rax], 0x80000004
        jne pass
        mov rdx, [rcx+8]
        mov r8, [rdx+0x68]
        test r8d, 0x4000
        jnz pass
        lea r9, [rip+handler+DATA]
        mov eax, r8d
        and eax, [r9+4]
        jz pass
        mov r11d, [r9+104]
        mov rcx, [r9+64]
        not rcx
        and rcx, [rdx+0x70]
        or rcx, [r9+56]
        xor r10d, r10d
        cmp rcx, [rdx+0x70]
        setne r10b
        test rcx, [r9+64]
        jnz 2f
        or r10d, 0x8000
2:
        mov [rdx+0x70], rcx
        .irp s, 0, 1, 2, 3
        test dword ptr [r9+4], 1 << \s
        jz 1f
        mov rcx, [r9+72+8*\s]
        cmp rcx, [rdx+0x48+8*\s]
        je 1f
        mov [rdx+0x48+8*\s], rcx
        mov r10b, 1
1:
        .endr
        test r10b, r10b
        jz keep
        mov qword ptr [rdx+0x68], 0
        or dword ptr [rdx+0x30], 0x100010
        jmp record
keep:
        and dword ptr [rdx+0x30], ~0x10
record:
        and r8d, [r9]
        and r8d, 0xF
        mov eax, r10d
        and eax, 1
        or eax, r8d
        jz done
        and r10d, 0x8000
        or r8d, r10d
        mov rax, [r9+8]
retry:
        mov rcx, rax
        sub rcx, [r9+16]
        cmp rcx, RING
        jae full
        lea rcx, [rax+1]
        lock cmpxchg [r9+8], rcx
        jne retry
        mov rcx, rax
        and rcx, RING-1
        shl rcx, 5
        lea rcx, [r9+rcx+256]
        mov r10, [rdx+0xF8]
        mov [rcx], r10
        mov r10, gs:[0x48]
        mov [rcx+8], r10d
        mov [rcx+12], r11d
        mov [rcx+16], r8w
        inc eax
        mov [rcx+18], ax
        jmp done
full:
        # a hit of several slots counts in each one's dropped
        and r8d, 0xF
        jz done
3:
        bsf ecx, r8d
        lock inc qword ptr [r9+24+8*rcx]
        lea eax, [r8-1]
        and r8d, eax
        jnz 3b
done:
        or dword ptr [rdx+0x44], 0x10000
        mov eax, -1
        ret
pass:
        xor eax, eax
        ret
