-- Bad input: every case gets a clear error, never a crash or a silent
-- wrong answer, and leaves the target's memory as it was.
local rmem = require "rmem"
local helpers = require "spec.helpers"

local PAGE = rmem.page_size
local maxint = math.maxinteger

describe("bad input", function()
  local p, t, r

  before_each(function()
    p, t = helpers.open_target()
    r = p:alloc(PAGE)
  end)
  after_each(function() p:close() t:stop() end)

  -- value, the words the message must contain
  local bad_integers = {
    { -1, "must not be negative, got %-1" },
    { 1.5, "must be an integer, got 1.5" },
    { 0 / 0, "must be an integer, got %-?nan" },
    { math.huge, "must be an integer, got inf" },
    { -math.huge, "must be an integer, got %-inf" },
    { "16", "must be an integer, got string" },
    { true, "must be an integer, got boolean" },
    { {}, "must be an integer, got table" },
    { math.mininteger, "must not be negative" },
  }

  local calls = {
    -- name, function(value) using the value as address, as size
    { "read", function(v) return p:read(v, 1) end, function(v) return p:read(r.address, v) end },
    { "write", function(v) return p:write(v, "x") end },
    { "alloc", nil, function(v) return p:alloc(v) end },
    { "commit", function(v) return p:commit(v, PAGE) end, function(v) return p:commit(r.address, v) end },
    { "decommit", function(v) return p:decommit(v, PAGE) end, function(v) return p:decommit(r.address, v) end },
    { "free", function(v) return p:free(v) end },
    { "reset", function(v) return p:reset(v, PAGE) end, function(v) return p:reset(r.address, v) end },
    { "protect", function(v) return p:protect(v, PAGE, "r") end,
      function(v) return p:protect(r.address, v, "r") end },
    { "query", function(v) return p:query(v) end },
  }

  for _, c in ipairs(calls) do
    local name, as_address, as_size = c[1], c[2], c[3]
    for _, b in ipairs(bad_integers) do
      local value, words = b[1], b[2]
      if as_address then
        it(("%s rejects address %s"):format(name, tostring(value)), function()
          local ok, err = pcall(as_address, value)
          assert.is_false(ok)
          assert.is_string(err)
          assert.matches("bad argument #1 to '" .. name .. "' %(address " .. words, err)
          assert.equal("commit", p:query(r.address).state)
        end)
      end
      if as_size then
        it(("%s rejects size %s"):format(name, tostring(value)), function()
          local ok, err = pcall(as_size, value)
          assert.is_false(ok)
          assert.matches("bad argument #" .. (name == "alloc" and 1 or 2) .. " to '" .. name
            .. "' %(size " .. words, err)
          assert.equal("commit", p:query(r.address).state)
          assert.equal("rw", p:query(r.address).protect)
        end)
      end
    end
  end

  it("rejects ranges that wrap past the end of the address space", function()
    for _, f in ipairs {
      function() p:read(maxint - 10, 11) end,
      function() p:write(maxint, "ab") end,
      function() p:decommit(maxint, 1) end,
      function() p:protect(2, maxint - 1, "r") end,
      function() p:reset(maxint - 1, 2) end,
      function() p:commit(maxint, 2) end,
    } do
      local ok, err = pcall(f)
      assert.is_false(ok)
      assert.matches("range wraps past the end of the address space", err)
    end
    -- the last byte of the address space is a valid range, not a wrap
    local e = helpers.error_of(p.read, p, maxint - 1, 1)
    assert.is_true(rmem.is_error(e))
  end)

  it("rejects huge sizes with an OS error, not a crash", function()
    local e = helpers.error_of(p.alloc, p, 1 << 60)
    assert.is_true(rmem.is_error(e))
    assert.equal("alloc", e.op)
    assert.equal(1 << 60, e.size)
    e = helpers.error_of(p.decommit, p, r.address, 1 << 40)
    assert.is_true(rmem.is_error(e))
    assert.equal("commit", p:query(r.address).state)
  end)

  it("rejects a huge read with an error, not a crash", function()
    local ok, err = pcall(p.read, p, r.address, 1 << 50)
    assert.is_false(ok)
    assert.matches("not enough memory", tostring(err))
  end)

  it("rejects unknown protection strings everywhere", function()
    for _, f in ipairs {
      function() p:alloc(PAGE, { protect = "rwz" }) end,
      function() p:protect(r.address, PAGE, "read") end,
      function() p:commit(r.address, PAGE, "w") end,
      function() r:protect("rw+") end,
    } do
      local ok, err = pcall(f)
      assert.is_false(ok)
      assert.matches("unknown protection", err)
    end
    assert.equal("rw", p:query(r.address).protect)
  end)

  it("rejects wrong types for bytes, options and targets", function()
    assert.has_error(function() p:write(r.address, 42) end,
      "bad argument #2 to 'write' (bytes must be a string, got number)")
    assert.has_error(function() p:alloc(PAGE, "rw") end,
      "bad argument #2 to 'alloc' (options must be a table, got string)")
    assert.has_error(function() p:alloc(PAGE, { protection = "rw" }) end,
      "bad argument #2 to 'alloc' (unknown option 'protection')")
    assert.has_error(function() p:write(r.address, "x", { forced = true }) end,
      "bad argument #3 to 'write' (unknown option 'forced')")
    assert.has_error(function() rmem.open(nil) end,
      "bad argument #1 to 'open' (pid must be an integer, got nil)")
    assert.has_error(function() rmem.open(-3) end,
      "bad argument #1 to 'open' (pid out of range)")
    assert.has_error(function() rmem.open(2.5) end,
      "bad argument #1 to 'open' (pid must be an integer, got 2.5)")
  end)

  it("reports argument errors at the caller's line", function()
    local ok, err = pcall(function() p:read(-1, 1) end)
    assert.is_false(ok)
    assert.matches("06%-bad_input_spec%.lua:%d+: bad argument #1 to 'read'", err)
    ok, err = pcall(function() r:read(0, 2 * PAGE) end)
    assert.is_false(ok)
    assert.matches("06%-bad_input_spec%.lua:%d+: bad argument #2 to 'read'", err)
  end)

  it("a target that exited mid-sequence gives readable errors, no crash", function()
    r:keep()
    t:stop(9)
    for _, f in ipairs {
      function() p:alloc(PAGE) end,
      function() p:free(r.address) end,
      function() p:protect(r.address, PAGE, "r") end,
      function() p:decommit(r.address, PAGE) end,
      function() p:commit(r.address, PAGE) end,
      function() p:write(r.address, "x") end,
    } do
      local e = helpers.error_of(f)
      assert.is_true(rmem.is_error(e))
      assert.equal("the process has exited (exit code 9)", e.hint)
    end
    assert.is_false(p:is_alive())
  end)
end)
