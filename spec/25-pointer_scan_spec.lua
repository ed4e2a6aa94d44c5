-- Pointer maps and the pointer scan, against targets that build
-- static -> heap A (+0x48) -> heap B (+0x10) -> value at fresh heap
-- addresses on every run (examples/target.c --chain).
local rmem = require "rmem"
local helpers = require "spec.helpers"

local MAGIC = "EE FF C0 00 ED 5E ED 5E" -- 0x5EED5EED00C0FFEE, the chain's value

local function tmpname()
  local name = os.tmpname()
  if rmem.platform == "windows" then name = os.getenv("TEMP") .. name end
  return name
end

--- A started --chain target, its process and the value's address.
local function chain_target()
  local t = helpers.start_target { chain = true }
  local p = rmem.open(t.pid)
  local hits = p:scan_all(MAGIC)
  assert(#hits == 1, ("the target's value was found %d times"):format(#hits))
  local value = hits[1]
  assert(p:query(value).type == "private")
  return t, p, value
end

--- A saved map whose header (the same length) has no process line.
local function no_process_line(whole)
  local hlen = string.unpack("<I4", whole, 17)
  local header = ("rmem pointer map\n"):rep(hlen):sub(1, hlen)
  return whole:sub(1, 20) .. header .. whole:sub(21 + hlen)
end

local function is_true_chain(c, p)
  return c.module == p.name and #c.offsets == 2 and c.offsets[1] == 0x48 and c.offsets[2] == 0x10
end

describe("pointer scan", function()
  local t, p, value, map
  setup(function()
    t, p, value = chain_target()
    map = p:pointer_map()
  end)
  teardown(function()
    if map then map:close() end
    if p then p:close() end
    if t then t:stop() end
  end)

  it("maps the pointers of the process, sorted, with its modules", function()
    assert.is_true(map.count > 0)
    assert.equal(p.bits, map.bits)
    assert.equal(p.pid, map.pid)
    assert.truthy(tostring(map):match("^rmem%.PointerMap of .*pointers"))
    local names = {}
    for _, m in ipairs(map.modules) do names[m.name] = true end
    assert.is_true(names[p.name])
    -- the program comes first: a modder's chains start there
    assert.equal(p.name, map.modules[1].name)
    -- the static root holds a heap pointer that the map recorded
    local root
    for _, c in ipairs(rmem.pointer_scan { map = map, target = value, depth = 2 }) do
      if is_true_chain(c, p) then root = p:module(c.module).base + c.offset end
    end
    assert.truthy(root)
    assert.equal(p:read_ptr(root), map._m:value_at(root))
  end)

  it("finds the true chain among the first 10, and every chain resolves", function()
    local chains = rmem.pointer_scan { map = map, target = value, depth = 4, max_offset = 0x1000 }
    assert.is_true(#chains > 0)
    local at
    for i, c in ipairs(chains) do
      if not at and is_true_chain(c, p) then at = i end
      -- the printed form is p:resolve's
      assert.equal(value, p:resolve(tostring(c)))
      if i > 1 then assert.is_true(#chains[i - 1].offsets <= #c.offsets) end
    end
    assert.truthy(at, "the true chain is missing")
    assert.is_true(at <= 10, "the true chain is number " .. tostring(at))
    assert.truthy(tostring(chains[at]):match("^" .. p.name:gsub("%p", "%%%0") .. "%+0x%x+ %-> 0x48 %-> 0x10$"))
  end)

  it("is deterministic and has no duplicates", function()
    local a = rmem.pointer_scan { map = map, target = value, depth = 3 }
    local b = rmem.pointer_scan { map = map, target = value, depth = 3 }
    assert.equal(#a, #b)
    local seen = {}
    for i = 1, #a do
      assert.equal(tostring(a[i]), tostring(b[i]))
      assert.is_nil(seen[tostring(a[i])])
      seen[tostring(a[i])] = true
    end
  end)

  it("keeps only chains that hold in a second run of the program", function()
    local t2, p2, value2 = chain_target()
    local map2 = p2:pointer_map()
    local chains = rmem.pointer_scan { maps = { map, map2 }, targets = { value, value2 }, depth = 4,
      limit = 100000 }
    local one = rmem.pointer_scan { map = map, target = value, depth = 4, limit = 100000 }
    local found = false
    for _, c in ipairs(chains) do
      found = found or is_true_chain(c, p)
      assert.equal(value, p:resolve(tostring(c)))
      assert.equal(value2, p2:resolve(tostring(c)))
    end
    assert.is_true(found, "the true chain did not survive")
    assert.is_true(#chains < #one, ("the second map removed nothing (%d of %d)"):format(#chains, #one))
    map2:close()
    p2:close()
    t2:stop()
  end)

  it("saves and loads maps: the same chains from the file", function()
    local path = tmpname()
    map:save(path)
    local size = assert(io.open(path, "rb")):seek("end")
    -- 16 bytes a pointer, plus a small header
    assert.is_true(size <= 16 * map.count + 4096, size)
    local loaded = rmem.load_pointer_map(path)
    assert.equal(map.count, loaded.count)
    assert.equal(#map.modules, #loaded.modules)
    local a = rmem.pointer_scan { map = map, target = value, depth = 3 }
    local b = rmem.pointer_scan { map = loaded, target = value, depth = 3 }
    assert.equal(#a, #b)
    for i = 1, #a do assert.equal(tostring(a[i]), tostring(b[i])) end
    loaded:close()
    -- a truncated file and a foreign one are clear errors
    local whole = assert(io.open(path, "rb")):read("a")
    for _, bad in ipairs { whole:sub(1, #whole - 7), whole:sub(1, 30), "not a map at all",
      "RMEMPTRS\2\0\0\0" .. whole:sub(13), no_process_line(whole) } do
      local f = assert(io.open(path, "wb"))
      f:write(bad)
      f:close()
      local e = helpers.error_of(rmem.load_pointer_map, path)
      assert.is_true(rmem.is_error(e))
      assert.equal("BAD_POINTER_MAP", e.name)
      assert.truthy(tostring(e):match("pointer map") or tostring(e):match("truncated"), tostring(e))
    end
    os.remove(path)
    local e = helpers.error_of(rmem.load_pointer_map, path)
    assert.equal("BAD_POINTER_MAP", e.name)
  end)

  it("refuses bad arguments clearly", function()
    local function argerr(opts, pattern)
      local e = helpers.error_of(rmem.pointer_scan, opts)
      assert.equal("string", type(e))
      assert.truthy(e:match("bad argument #1 to 'pointer_scan'"), e)
      assert.truthy(e:match(pattern), e)
    end
    argerr({ map = map, target = value, depth = 0 }, "depth must be 1 to 12")
    argerr({ map = map, target = value, depth = 20 }, "depth must be 1 to 12")
    argerr({ map = map, target = 0 }, "must not be 0")
    argerr({ map = map, target = -5 }, "must not be negative")
    argerr({ map = map, target = value, max_offset = -1 }, "max_offset")
    argerr({ map = "x", target = value }, "expected a pointer map")
    argerr({ maps = { map }, targets = { value, value } }, "one length")
    argerr({ map = map, target = value, maps = { map }, targets = { value } }, "not both")
    argerr({ map = map, target = value, colour = 1 }, "unknown option 'colour'")
    argerr({ target = value }, "needs map and target")
    argerr({ map = map }, "needs map and target")
    -- a map of another pointer size
    local path = tmpname()
    map:save(path)
    local s = assert(io.open(path, "rb")):read("a")
    local other = string.pack("<I4", 96 - map.bits)
    local f = assert(io.open(path, "wb"))
    f:write(s:sub(1, 12) .. other .. s:sub(17))
    f:close()
    local foreign = rmem.load_pointer_map(path)
    os.remove(path)
    argerr({ maps = { map, foreign }, targets = { value, value } }, "%d%d%-bit and a %d%d%-bit process")
    foreign:close()
    local closed = rmem.load_pointer_map((function()
      local q = tmpname()
      map:save(q)
      return q
    end)())
    closed:close()
    argerr({ map = closed, target = value }, "closed")
    assert.equal("rmem.PointerMap (closed)", tostring(closed))
  end)

  -- A map file made here: the values' spread decides how they are sorted
  -- (packed with their index in 64 bits, or not: 62 bits of spread).
  it("finds every pointer whatever the spread of the values", function()
    local path = tmpname()
    for _, spread in ipairs { 12, 40, 62 } do
      math.randomseed(spread)
      local n, vals, pairs_ = 300, {}, {}
      for i = 1, n do
        vals[i] = math.random(0, (1 << spread) - 1) & ~7 | 0x100
        pairs_[i] = string.pack("<I8I8", 0x1000 + 8 * (i - 1), vals[i])
      end
      local header = "rmem pointer map\nprocess\tmade\t1\nmodule\tm.bin\t4096\t65536\t65536"
      local f = assert(io.open(path, "wb"))
      f:write("RMEMPTRS", string.pack("<I4I4I4", 1, 64, #header), header, string.pack("<I8", n),
        table.concat(pairs_))
      f:close()
      local m <close> = rmem.load_pointer_map(path)
      for i = 1, n do
        local chains = rmem.pointer_scan { map = m, target = vals[i] + 5, depth = 1, max_offset = 16 }
        local want = ("m.bin+0x%X -> 0x5"):format(8 * (i - 1))
        local seen = {}
        for k, c in ipairs(chains) do seen[k] = tostring(c) end
        assert.is_true(#chains >= 1 and table.concat(seen, ","):find(want, 1, true) ~= nil,
          ("spread %d: %s missing from {%s}"):format(spread, want, table.concat(seen, ", ")))
      end
    end
    os.remove(path)
  end)

  -- Every Lua call that can raise (a table, a string, a userdata) fails in
  -- turn: the C code's buffers must still be freed. ASan counts the bytes.
  helpers.linux_it("leaks nothing when Lua runs out of memory midway", function()
    local path = tmpname()
    map:save(path)
    local prefix = ("local rmem = require 'rmem'; local path, pid, value = %q, %d, %d\n"):format(
      path, p.pid, value)
    local cases = {
      load = "return function() rmem.load_pointer_map(path):close() end",
      scan = [[local m = rmem.load_pointer_map(path)
        return function() rmem.pointer_scan { map = m, target = value, depth = 3, limit = 200 } end]],
      map = [[local q = rmem.open(pid)
        return function() q:pointer_map():close() end]],
    }
    for name, code in pairs(cases) do
      local n, failed = 0, 0
      while true do
        local ok, msg, leaked = helpers.testproc.failing_alloc(prefix .. code, n, package.path,
          package.cpath)
        -- (below 0 only if another thread freed memory meanwhile)
        if leaked then
          assert.is_true(leaked <= 0, ("%s, failing after %d allocations (%s): %d bytes leaked"):format(
            name, n, msg, leaked))
        end
        if ok then break end
        assert.truthy(msg:match("not enough memory"), name .. ": " .. msg)
        failed = failed + 1
        n = n + 1 + n // 64 -- every point early, then a sample
      end
      assert.is_true(failed > 10, name)
    end
    os.remove(path)
  end)

  it("a process that exited cannot be mapped", function()
    local t3 = helpers.start_target()
    local p3 = rmem.open(t3.pid)
    t3:stop()
    local e = helpers.error_of(p3.pointer_map, p3)
    assert.is_true(rmem.is_error(e))
    p3:close()
    e = helpers.error_of(p3.pointer_map, p3)
    assert.equal("PROCESS_CLOSED", e.name)
  end)
end)
