-- rmem: memory operations on a process (alloc, commit, decommit, free,
-- reset, protect, query, regions, read, write).
local rmem = require "rmem"
local helpers = require "spec.helpers"

local PAGE = rmem.page_size

describe("rmem memory operations", function()
  local p, t

  before_each(function() p, t = helpers.open_target() end)
  after_each(function() p:close() t:stop() end)

  describe("p:alloc()", function()
    it("commits read-write pages by default", function()
      local r <close> = p:alloc(5000)
      assert.equal(2 * PAGE, r.size)
      assert.equal(0, r.address % rmem.granularity)
      assert.equal(p, r.process)
      local info = p:query(r.address)
      assert.equal("commit", info.state)
      assert.equal("rw", info.protect)
      assert.equal("private", info.type)
      assert.equal(r.address, info.allocation_base)
      assert.equal("rw", info.allocation_protect)
      assert.equal(2 * PAGE, info.size)
    end)

    it("reserves only with commit = false, and commit makes part usable", function()
      local r <close> = p:alloc(4 * PAGE, { commit = false })
      local before = p:query(r.address)
      assert.equal("reserve", before.state)
      assert.is_nil(before.protect)
      assert.equal(4 * PAGE, before.size)
      assert.equal(r.address + PAGE, p:commit(r.address + PAGE, 2 * PAGE, "rw"))
      assert.same({ "reserve", "commit", "commit", "reserve" },
        helpers.page_states(p, r.address, 4 * PAGE))
      local after = p:query(r.address + PAGE)
      assert.equal("rw", after.protect)
      assert.equal(2 * PAGE, after.size)
      r:write(PAGE, "in committed memory")
      assert.equal("in committed memory", r:read(PAGE, 19))
    end)

    it("commits a range of 150 alternating runs in one call, keeping committed contents", function()
      local n = 300
      local r <close> = p:alloc(n * PAGE, { commit = false })
      for i = 0, n - 1, 2 do
        r:commit(i * PAGE, PAGE)
        r:write(i * PAGE, "page " .. i)
      end
      r:commit(0, n * PAGE)
      local states = helpers.page_states(p, r.address, n * PAGE)
      for i = 1, n do assert.equal("commit", states[i]) end
      for i = 0, n - 1 do
        local want = i % 2 == 0 and ("page " .. i) or ("\0"):rep(#("page " .. i))
        assert.equal(want, r:read(i * PAGE, #want))
      end
      r:decommit(0, n * PAGE)
      assert.equal("reserve", r:query(0).state)
      assert.equal(n * PAGE, r:query(0).size)
    end)

    it("allocates near an address, within reach", function()
      local m = p:module(helpers.target_name)
      local r <close> = p:alloc(PAGE, { near = m.base, protect = "rwx" })
      assert.is_true(math.abs(r.address - m.base) <= 0x7FFF0000)
      assert.is_true(math.abs(r.address + r.size - m.base) <= 0x7FFF0000)
      assert.equal("rwx", r:query().protect)
      assert.equal("commit", r:query().state)
      local close <close> = p:alloc(PAGE, { near = r.address, max_distance = 16 * rmem.granularity })
      assert.is_true(math.abs(close.address - r.address) <= 16 * rmem.granularity)
      local e = helpers.error_of(p.alloc, p, PAGE, { near = m.base, max_distance = 0 })
      assert.equal("NO_SPACE_NEAR", e.name)
      assert.equal(m.base, e.address)
      e = helpers.error_of(p.alloc, p, 0, { near = m.base })
      assert.matches("bad argument #1 to 'alloc' %(size must be positive, got 0%)", e)
    end)

    it("uses the protection asked for", function()
      local r <close> = p:alloc(PAGE, { protect = "rx" })
      assert.equal("rx", r:query().protect)
      local r2 <close> = p:alloc(PAGE, { protect = rmem.flags.PAGE_READONLY })
      assert.equal("r", r2:query().protect)
    end)

    it("allocates at a wanted address, rounded down to the granularity", function()
      local probe = p:alloc(rmem.granularity * 4, { commit = false })
      local want = probe.address + rmem.granularity
      probe:free()
      local r <close> = p:alloc(PAGE, { address = want + 100 })
      assert.equal(want, r.address)
      -- [want + 100, want + 100 + PAGE) touches two pages
      assert.equal(2 * PAGE, r.size)
      assert.equal(2 * PAGE, r:query().size)
      assert.equal("commit", r:query().state)
    end)

    helpers.win_it("allocates top-down", function()
      local low <close> = p:alloc(PAGE)
      local high <close> = p:alloc(PAGE, { top_down = true })
      assert.is_true(high.address > low.address)
    end)

    helpers.win_it("accepts write_watch (MEM_WRITE_WATCH) and commits", function()
      local r <close> = p:alloc(PAGE, { write_watch = true })
      assert.equal("commit", r:query().state)
    end)
  end)

  describe("p:protect()", function()
    it("returns the old protection and sets the new one", function()
      local r <close> = p:alloc(2 * PAGE)
      assert.equal("rw", p:protect(r.address, PAGE, "r"))
      assert.equal("r", p:protect(r.address, PAGE, "rx"))
      assert.equal("rx", p:query(r.address).protect)
      assert.equal("rw", p:query(r.address + PAGE).protect)
    end)

    helpers.win_it("sets guard pages", function()
      local r <close> = p:alloc(2 * PAGE)
      assert.equal("rw", p:protect(r.address + PAGE, 1, "rw+guard"))
      assert.equal("rw+guard", p:query(r.address + PAGE).protect)
    end)

    helpers.linux_it("rejects modifiers Linux has no meaning for", function()
      local r <close> = p:alloc(PAGE)
      for _, prot in ipairs { "rw+guard", "rw+nocache", "rw+writecombine" } do
        local e = helpers.error_of(p.protect, p, r.address, PAGE, prot)
        assert.equal("EINVAL", e.name)
      end
      assert.equal("rw", r:query().protect)
    end)

    it("fails on reserved pages", function()
      local r <close> = p:alloc(2 * PAGE, { commit = false })
      local e = helpers.error_of(p.protect, p, r.address, PAGE, "rw")
      assert.equal("protect", e.op)
      assert.equal(helpers.name("ERROR_INVALID_ADDRESS"), e.name)
      assert.equal(r.address, e.address)
      assert.equal(PAGE, e.size)
      assert.matches("commit them first", e.hint)
      assert.equal("reserve", r:query().state)
    end)
  end)

  describe("p:decommit() and p:free()", function()
    it("decommitted pages report reserve, and free releases them all", function()
      local r = p:alloc(3 * PAGE)
      p:decommit(r.address + PAGE, 1)
      assert.same({ "commit", "reserve", "commit" }, helpers.page_states(p, r.address, 3 * PAGE))
      p:free(r.address)
      assert.is_true(r:is_freed())
      assert.same({ "free", "free", "free" }, helpers.page_states(p, r.address, 3 * PAGE))
    end)

    it("raises for an address that is not an allocation base", function()
      local r <close> = p:alloc(2 * PAGE)
      local e = helpers.error_of(p.free, p, r.address + PAGE)
      assert.equal("free", e.op)
      assert.equal(helpers.name("ERROR_INVALID_ADDRESS"), e.name)
      assert.matches("base address that alloc returned", e.hint)
      assert.is_false(r:is_freed())
      assert.equal("commit", r:query().state)
    end)

    it("commit outside a reservation raises with a hint", function()
      local r = p:alloc(PAGE)
      local a = r.address
      r:free()
      local e = helpers.error_of(p.commit, p, a, PAGE)
      assert.equal("commit", e.op)
      assert.is_true(e.name == helpers.name("ERROR_INVALID_ADDRESS")
        or e.name == helpers.name("ERROR_INVALID_PARAMETER"))
      assert.equal("free", p:query(a).state)
    end)
  end)

  describe("p:reset()", function()
    it("keeps the pages committed", function()
      local r <close> = p:alloc(2 * PAGE)
      p:reset(r.address, 2 * PAGE)
      assert.same({ "commit", "commit" }, helpers.page_states(p, r.address, 2 * PAGE))
    end)
  end)

  describe("p:read() and p:write()", function()
    for _, n in ipairs { 1, 7, PAGE - 1, PAGE, PAGE + 1, 65536 + 3, 3 * 1024 * 1024 + 5 } do
      it(("round-trips %d bytes"):format(n), function()
        local r <close> = p:alloc(n)
        local bytes = {}
        for i = 1, math.min(n, 4096) do bytes[i] = string.char((i * 7 + n) % 256) end
        local chunk = table.concat(bytes)
        local data = chunk:rep(n // #chunk + 1):sub(1, n)
        assert.equal(n, p:write(r.address, data))
        assert.equal(data, p:read(r.address, n))
        assert.equal(data:sub(-1), p:read(r.address + n - 1, 1))
      end)
    end

    it("reads 0 bytes as an empty string", function()
      local r <close> = p:alloc(PAGE)
      assert.equal("", p:read(r.address, 0))
      assert.equal(0, p:write(r.address, ""))
    end)

    it("a read across an uncommitted page: a partial copy, zeros under Wine", function()
      local r <close> = p:alloc(2 * PAGE)
      r:write(PAGE - 4, "abcdefgh")
      r:decommit(PAGE, PAGE)
      assert.equal("reserve", r:query(PAGE).state)
      if helpers.wine then
        -- Wine 8's ReadProcessMemory reads reserved pages as zeros and
        -- succeeds, where Windows fails with ERROR_PARTIAL_COPY: the page
        -- state above is what shows the decommit there.
        assert.equal("abcd" .. ("\0"):rep(4), p:read(r.address + PAGE - 4, 8))
      else
        local e = helpers.error_of(p.read, p, r.address + PAGE - 4, 8)
        assert.equal(helpers.name("ERROR_PARTIAL_COPY"), e.name)
        assert.equal(4, e.bytes_done)
        assert.matches("not committed", e.hint)
      end
    end)

    it("a read of unmapped memory raises a readable error", function()
      -- the first 64 KiB are never mapped (Windows, Wine, Linux's mmap_min_addr)
      local e = helpers.error_of(p.read, p, 0x1000, 16)
      assert.equal("read", e.op)
      assert.equal(0x1000, e.address)
      assert.equal(16, e.size)
      assert.equal(0, e.bytes_done)
      assert.is_true(e.name == helpers.name("ERROR_NOACCESS")
        or e.name == helpers.name("ERROR_PARTIAL_COPY"))
    end)

    it("force writes read-only and executable pages and restores each page's protection", function()
      local r <close> = p:alloc(3 * PAGE)
      r:protect(0, PAGE, "r")
      r:protect(PAGE, PAGE, "rx")
      local data = ("F"):rep(2 * PAGE + 10)
      assert.equal(#data, p:write(r.address + 5, data, { force = true }))
      assert.equal(data, r:read(5, #data))
      assert.equal("r", r:query(0).protect)
      assert.equal("rx", r:query(PAGE).protect)
      assert.equal("rw", r:query(2 * PAGE).protect)
    end)

    it("force restores the protection when the write fails", function()
      local r <close> = p:alloc(2 * PAGE)
      r:protect(0, PAGE, "r")
      local ok = pcall(p.write, p, 0x1000, "x", { force = true })
      assert.is_false(ok)
      assert.equal("r", r:query(0).protect)
    end)
  end)

  describe("p:regions()", function()
    it("walks the whole user space in ascending order, free regions included", function()
      local r <close> = p:alloc(2 * PAGE)
      local reserved <close> = p:alloc(PAGE, { commit = false })
      local last, seen, seen_reserved, states = -1, nil, nil, {}
      for info in p:regions() do
        assert.is_true(info.base > last)
        last = info.base
        states[info.state] = true
        if info.base == r.address then seen = info end
        if info.base == reserved.address then seen_reserved = info end
      end
      assert.same({ commit = true, reserve = true, free = true }, states)
      assert.equal("commit", seen.state)
      assert.equal(2 * PAGE, seen.size)
      assert.equal("reserve", seen_reserved.state)
    end)

    it("filters by state and protection", function()
      local r <close> = p:alloc(PAGE, { protect = "rwx" })
      local found = false
      for info in p:regions { state = "commit", protect = "rwx" } do
        assert.equal("commit", info.state)
        assert.equal("rwx", info.protect)
        if info.base == r.address then found = true end
      end
      assert.is_true(found)
      for info in p:regions { state = { "reserve", "free" } } do
        assert.is_not.equal("commit", info.state)
      end
      -- reserved regions have no protection, so never match one; free
      -- regions report PAGE_NOACCESS, as VirtualQueryEx does on Windows
      local noaccess <close> = p:alloc(PAGE, { protect = "none" })
      local bases = {}
      for info in p:regions { protect = "none" } do
        assert.is_not.equal("reserve", info.state)
        bases[info.base] = true
      end
      assert.is_true(bases[noaccess.address])
      assert.has_error(function() p:regions { state = "comitted" } end,
        "bad argument #1 to 'regions' (unknown state 'comitted' (expected commit, free, reserve))")
    end)
  end)
end)
