/*
 * rmem.disasm: x86 and x86-64 disassembly with Capstone 4, kept out of
 * rmem.core so that the core builds and works where Capstone is missing.
 *
 *   disasm.disasm(bytes, address, bits [, count]) -> list of instructions
 *
 * Each instruction is a table: address, size, bytes, mnemonic, operands,
 * text (Intel syntax), and the encoding details that signatures and
 * relocation need: disp_offset/disp_size and imm_offset/imm_size (0-based
 * offsets in bytes, present when non-zero), rip_relative and absolute (a
 * memory operand addressed by rip, or by a bare displacement), data (the
 * address such an operand refers to), target (where a relative branch goes),
 * and kind: "jmp", "jcc", "call", "ret", "loop" (loop*, jcxz/jecxz/jrcxz),
 * "int" or "iret" for control flow. Decoding stops at the first byte that
 * is not an instruction, or after count instructions.
 */
#include <lauxlib.h>
#include <lua.h>
#include <stdint.h>
#include <string.h>

#include <capstone/capstone.h>

#define ENGINE "rmem.disasm.engine"

/* One Capstone handle per mode, opened on first use, with one instruction
 * buffer: owned by a userdata so an error while building tables leaks nothing. */
typedef struct {
  csh handle[2];
  cs_insn *insn[2];
  int open[2];
} Engine;

static int engine_gc(lua_State *L) {
  Engine *e = (Engine *)luaL_checkudata(L, 1, ENGINE);
  int i;
  for (i = 0; i < 2; i++)
    if (e->open[i]) {
      cs_free(e->insn[i], 1);
      cs_close(&e->handle[i]);
      e->open[i] = 0;
    }
  return 0;
}

static void set_int(lua_State *L, const char *k, lua_Integer v) {
  lua_pushinteger(L, v);
  lua_setfield(L, -2, k);
}

static int has_group(const cs_detail *d, uint8_t g) {
  int i;
  for (i = 0; i < d->groups_count; i++)
    if (d->groups[i] == g)
      return 1;
  return 0;
}

static const char *kind_of(const cs_insn *in) {
  const cs_detail *d = in->detail;
  switch (in->id) {
  case X86_INS_LOOP: case X86_INS_LOOPE: case X86_INS_LOOPNE:
  case X86_INS_JCXZ: case X86_INS_JECXZ: case X86_INS_JRCXZ:
    return "loop";
  case X86_INS_JMP: case X86_INS_LJMP:
    return "jmp";
  default:
    break;
  }
  if (has_group(d, CS_GRP_JUMP))
    return "jcc";
  if (has_group(d, CS_GRP_CALL))
    return "call";
  if (has_group(d, CS_GRP_RET))
    return "ret";
  if (has_group(d, CS_GRP_IRET))
    return "iret";
  if (has_group(d, CS_GRP_INT))
    return "int";
  return NULL;
}

/* Capstone 4.0.2 reports a wrong disp_size for some SSE forms (2 for
 * movdqa xmm0, [rip + x]): with 32- or 64-bit addressing the ModR/M byte
 * says it, 1 byte for mod 01 and 4 otherwise; moffs forms use the address size. */
static int disp_size(const cs_x86 *x) {
  if (x->addr_size == 2)
    return x->encoding.disp_size;
  if (x->encoding.modrm_offset == 0)
    return x->encoding.disp_size;
  return (x->modrm >> 6) == 1 ? 1 : 4;
}

/* wrap: the address space's mask (32-bit code wraps at 4 GiB, and Capstone
 * gives its displacements and targets sign-extended to 64 bits) */
static void push_insn(lua_State *L, const cs_insn *in, uint64_t wrap) {
  const cs_x86 *x = &in->detail->x86;
  const char *kind = kind_of(in);
  int i;
  lua_createtable(L, 0, 16);
  set_int(L, "address", (lua_Integer)in->address);
  set_int(L, "size", in->size);
  lua_pushlstring(L, (const char *)in->bytes, in->size);
  lua_setfield(L, -2, "bytes");
  lua_pushstring(L, in->mnemonic);
  lua_setfield(L, -2, "mnemonic");
  lua_pushstring(L, in->op_str);
  lua_setfield(L, -2, "operands");
  if (in->op_str[0])
    lua_pushfstring(L, "%s %s", in->mnemonic, in->op_str);
  else
    lua_pushstring(L, in->mnemonic);
  lua_setfield(L, -2, "text");
  if (x->encoding.disp_offset) {
    set_int(L, "disp_offset", x->encoding.disp_offset);
    set_int(L, "disp_size", disp_size(x));
  }
  if (x->encoding.imm_offset) {
    set_int(L, "imm_offset", x->encoding.imm_offset);
    set_int(L, "imm_size", x->encoding.imm_size);
  }
  if (kind) {
    lua_pushstring(L, kind);
    lua_setfield(L, -2, "kind");
  }
  for (i = 0; i < x->op_count; i++) {
    const cs_x86_op *op = &x->operands[i];
    if (op->type == X86_OP_MEM) {
      if (op->mem.base == X86_REG_RIP || op->mem.base == X86_REG_EIP) {
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, "rip_relative");
        set_int(L, "data", (lua_Integer)((in->address + in->size + (uint64_t)op->mem.disp) & wrap));
      } else if (op->mem.base == X86_REG_INVALID && op->mem.index == X86_REG_INVALID &&
                 op->mem.segment == X86_REG_INVALID) {
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, "absolute");
        set_int(L, "data", (lua_Integer)((uint64_t)op->mem.disp & wrap));
      }
    } else if (op->type == X86_OP_IMM && has_group(in->detail, CS_GRP_BRANCH_RELATIVE)) {
      set_int(L, "target", (lua_Integer)((uint64_t)op->imm & wrap));
    }
  }
}

/* The handle for bits (argument 3), opened on first use. */
static int engine_mode(lua_State *L, Engine *e) {
  lua_Integer bits = luaL_checkinteger(L, 3);
  int m = bits == 64;
  luaL_argcheck(L, bits == 32 || bits == 64, 3, "bits must be 32 or 64");
  if (!e->open[m]) {
    if (cs_open(CS_ARCH_X86, m ? CS_MODE_64 : CS_MODE_32, &e->handle[m]) != CS_ERR_OK)
      return luaL_error(L, "capstone: cs_open failed");
    cs_option(e->handle[m], CS_OPT_DETAIL, CS_OPT_ON);
    e->insn[m] = cs_malloc(e->handle[m]);
    if (e->insn[m] == NULL) {
      cs_close(&e->handle[m]);
      return luaL_error(L, "capstone: out of memory");
    }
    e->open[m] = 1;
  }
  return m;
}

/* disasm(bytes, address, bits [, count]) */
static int l_disasm(lua_State *L) {
  Engine *e = (Engine *)luaL_checkudata(L, lua_upvalueindex(1), ENGINE);
  size_t n;
  const uint8_t *code = (const uint8_t *)luaL_checklstring(L, 1, &n);
  uint64_t address = (uint64_t)luaL_checkinteger(L, 2);
  int m = engine_mode(L, e);
  lua_Integer count = luaL_optinteger(L, 4, LUA_MAXINTEGER);
  lua_Integer i = 0;
  uint64_t wrap = luaL_checkinteger(L, 3) == 32 ? 0xFFFFFFFFu : ~(uint64_t)0;
  luaL_argcheck(L, count >= 0, 4, "count must not be negative");
  lua_newtable(L);
  while (i < count && cs_disasm_iter(e->handle[m], &code, &n, &address, e->insn[m])) {
    push_insn(L, e->insn[m], wrap);
    lua_rawseti(L, -2, ++i);
  }
  return 1;
}

/* branch_into(bytes, address, bits, lo, hi) -> address, text of the first
 * instruction at or after hi whose relative branch lands in (lo, hi), or
 * nil: a linear sweep that ends at the bytes' end, at undecodable bytes or
 * at int3 padding after a ret or jmp (the function's end). p:hook's check
 * that nothing else jumps into the bytes it moves, without a table per
 * instruction. */
static int l_branch_into(lua_State *L) {
  Engine *e = (Engine *)luaL_checkudata(L, lua_upvalueindex(1), ENGINE);
  size_t n;
  const uint8_t *code = (const uint8_t *)luaL_checklstring(L, 1, &n);
  uint64_t address = (uint64_t)luaL_checkinteger(L, 2);
  int m = engine_mode(L, e), ended = 0;
  uint64_t lo = (uint64_t)luaL_checkinteger(L, 4), hi = (uint64_t)luaL_checkinteger(L, 5);
  cs_insn *in = e->insn[m];
  while (n > 0 && !(ended && *code == 0xCC) && cs_disasm_iter(e->handle[m], &code, &n, &address, in)) {
    const cs_x86 *x = &in->detail->x86;
    int k;
    ended = in->id == X86_INS_RET || in->id == X86_INS_JMP;
    if (in->address < hi || !has_group(in->detail, CS_GRP_BRANCH_RELATIVE))
      continue;
    for (k = 0; k < x->op_count; k++)
      if (x->operands[k].type == X86_OP_IMM && (uint64_t)x->operands[k].imm > lo &&
          (uint64_t)x->operands[k].imm < hi) {
        lua_pushinteger(L, (lua_Integer)in->address);
        lua_pushfstring(L, "%s %s", in->mnemonic, in->op_str);
        return 2;
      }
  }
  return 0;
}

int luaopen_rmem_disasm(lua_State *L) {
  Engine *e;
  int major, minor;
  lua_newtable(L);
  e = (Engine *)lua_newuserdatauv(L, sizeof *e, 0);
  memset(e, 0, sizeof *e);
  if (luaL_newmetatable(L, ENGINE)) {
    lua_pushcfunction(L, engine_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  lua_pushvalue(L, -1);
  lua_pushcclosure(L, l_disasm, 1);
  lua_setfield(L, -3, "disasm");
  lua_pushcclosure(L, l_branch_into, 1);
  lua_setfield(L, -2, "branch_into");
  cs_version(&major, &minor);
  lua_pushfstring(L, "Capstone %d.%d", major, minor);
  lua_setfield(L, -2, "version");
  return 1;
}
