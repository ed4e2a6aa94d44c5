-- The bad-input matrix: every public function, with every class of bad
-- value in each argument it checks, against a real target. Each call must
-- end in an argument error or an rmem.Error (never another Lua error, a
-- crash or a hang), values of the wrong kind must be refused, and the host's
-- handle count and the target's regions must be unchanged afterwards.
local rmem = require "rmem"
local helpers = require "spec.helpers"

local PAGE = rmem.page_size
local NIL = setmetatable({}, { __tostring = function() return "nil" end })

-- The classes of bad values: name, value (NIL for nil), and what they are
-- wrong for: "int" (an integer is expected), "str", or both.
local CLASSES = {
  { "nil", NIL, int = true, str = true },
  { "a string", "12", int = true },
  { "a table", {}, int = true, str = true },
  { "a boolean", true, int = true, str = true },
  { "NaN", 0 / 0, int = true },
  { "+inf", math.huge, int = true },
  { "-inf", -math.huge, int = true },
  { "a fraction", 1.5, int = true },
  { "negative", -1, int = true },
  { "zero", 0 },
  { "maxinteger", math.maxinteger },
  { "mininteger", math.mininteger, int = true },
}

-- Each function: how to call it with valid arguments (given a fixture of a
-- committed read-write page `a` and its region `r`), and the kind of each
-- argument: "int" or "str"; "int?" / "str?" where nil means a default;
-- "val" for a value to write (negative ones are fine there).
local function process_cases(f)
  local a = f.r.address
  return {
    { "alloc", { PAGE }, { "int" } },
    { "commit", { a, PAGE, "rw" }, { "int", "int" } },
    { "decommit", { a, PAGE }, { "int", "int" } },
    { "free", { a + 1 }, { "int" } },
    { "reset", { a, PAGE }, { "int", "int" } },
    { "protect", { a, PAGE, "rw" }, { "int", "int", "str" } },
    { "query", { a }, { "int" } },
    { "read", { a, 8 }, { "int", "int" } },
    { "write", { a, "x" }, { "int", "str" } },
    { "read_u8", { a }, { "int" } },
    { "read_i16", { a }, { "int" } },
    { "read_u32", { a }, { "int" } },
    { "read_u64", { a }, { "int" } },
    { "read_f64", { a }, { "int" } },
    { "read_ptr", { a }, { "int" } },
    { "write_u32", { a, 7 }, { "int", "int" } },
    { "write_i64", { a, 7 }, { "int", "val" } },
    { "write_ptr", { a, 7 }, { "int", "val" } },
    { "read_string", { a, 16 }, { "int", "int?" } },
    { "read_wstring", { a, 16 }, { "int", "int?" } },
    { "write_string", { a, "x" }, { "int", "str" } },
    { "write_wstring", { a, "x" }, { "int", "str" } },
    { "unpack", { a, "<I4" }, { "int", "str" } },
    { "pack", { a, "<I4", 1 }, { "int", "str" } },
    { "resolve", { a, 0 }, { "int", "val" } },
    { "hexdump", { a, 16 }, { "int", "int" } },
    { "patch", { a, "x" }, { "int", "str" } },
    { "with_protection", { a, PAGE, "rw", function() end }, { "int", "int", "str" } },
    { "scan_all", { "90 90", { from = a, to = a + PAGE } }, { "str" } },
    { "module", { "x" }, { "str" } },
    { "call", { a, 0 }, { "int", "int?" } },
    { "call_with", { a, {} }, { "int" } },
    { "proc_address", { helpers.target_name, "main" }, { "str", "str" } },
    { "load_library", { "x" }, { "str" } },
    { "unload_library", { "x" }, { "str" } },
  }
end

local function region_cases()
  return {
    { "read", { 0, 8 }, { "int", "int" } },
    { "write", { 0, "x" }, { "int", "str" } },
    { "commit", { 0, PAGE }, { "int", "int" } },
    { "decommit", { 0, PAGE }, { "int", "int" } },
    { "reset", { 0, PAGE }, { "int", "int" } },
    { "protect", { 0, PAGE, "rw" }, { "int", "int", "str" } },
    { "query", { 0 }, { "int?" } },
    { "read_u32", { 0 }, { "int" } },
    { "write_u16", { 0, 1 }, { "int", "int" } },
    { "read_string", { 0 }, { "int" } },
  }
end

local function unpack_args(args)
  local out = {}
  for i = 1, #args do
    if args[i] ~= NIL then out[i] = args[i] end
  end
  return table.unpack(out, 1, #args)
end

--- Calls obj[name](obj, args...) and returns "ok", "argument", "rmem" or
-- the unexpected error.
local function outcome(obj, name, args)
  local ok, err = pcall(obj[name], obj, unpack_args(args))
  if ok then return "ok" end
  if rmem.is_error(err) then return "rmem", err end
  if type(err) == "string" and err:find("bad argument #%d+ to '") then return "argument", err end
  return "unexpected", err
end



describe("the bad-input matrix", function()
  local t, p, f, cases_run

  before_each(function()
    t = helpers.start_target()
    p = rmem.open(t.pid)
    f = { r = p:alloc(PAGE) }
  end)

  after_each(function()
    if not f.r:is_freed() then f.r:free() end
    p:close()
    t:stop()
  end)

  --- Runs obj[name] with each bad value in each checked position.
  local function matrix(obj, cases)
    local count = 0
    for _, case in ipairs(cases) do
      local name, valid, kinds = case[1], case[2], case[3]
      for pos, kind in ipairs(kinds) do
        for _, class in ipairs(CLASSES) do
          local args = table.move(valid, 1, #valid, 1, {})
          args[pos] = class[2]
          local must_fail = class[kind:gsub("%?$", "")] and not (class[1] == "nil" and kind:find("%?"))
          if kind == "val" then
            must_fail = class.int and class[1] ~= "negative" and class[1] ~= "mininteger"
          end
          local got, err = outcome(obj, name, args)
          local what = ("%s(#%d = %s)"):format(name, pos, class[1])
          assert(got ~= "unexpected", what .. " raised a stray error: " .. tostring(err))
          assert(not (must_fail and got == "ok"), what .. " was accepted")
          if must_fail and got == "argument" then
            assert(err:find(("bad argument #%d to"):format(pos), 1, true), what .. ": " .. err)
          end
          count = count + 1
          -- the fixture page back to committed read-write, whatever the call did
          f.r:commit(0, PAGE, "rw")
        end
      end
      -- a range that wraps past the end of the address space
      if kinds[1] == "int" and kinds[2] == "int" and name ~= "resolve" then
        local args = table.move(valid, 1, #valid, 1, {})
        args[1], args[2] = math.maxinteger - 10, 100
        local got = outcome(obj, name, args)
        assert(got == "argument" or got == "rmem", name .. " with a wrapping range: " .. got)
        count = count + 1
      end
    end
    return count
  end

  it("every process method refuses every bad value, and nothing leaks", function()
    local handles, regions = helpers.handle_count(), helpers.mapped_count(p)
    local before = f.r.address
    cases_run = matrix(p, process_cases(f))
    -- what the calls that succeeded made (alloc(maxinteger) aside, none)
    assert.equal(before, f.r.address)
    assert.equal(handles, helpers.handle_count())
    assert.equal(regions, helpers.mapped_count(p))
    assert.is_true(cases_run >= 200, "only " .. cases_run .. " cases")
  end)

  it("every region method too", function()
    local handles, regions = helpers.handle_count(), helpers.mapped_count(p)
    local n = matrix(f.r, region_cases())
    assert.equal(handles, helpers.handle_count())
    assert.equal(regions, helpers.mapped_count(p))
    assert.is_true(n >= 100, "only " .. n .. " cases")
  end)

  it("rmem.open refuses every bad pid and access", function()
    local handles = helpers.handle_count()
    for _, class in ipairs(CLASSES) do
      local ok, err = pcall(rmem.open, unpack_args { class[2] })
      assert.is_false(ok, "open(" .. class[1] .. ")")
      assert(rmem.is_error(err) or tostring(err):find("bad argument #1 to 'open'", 1, true), tostring(err))
      -- (nil is the default access, and 0 a valid if useless mask, as in Win32)
      ok, err = pcall(rmem.open, t.pid, { access = class[2] })
      if ok then
        assert(class[2] == NIL or class[2] == 0, "open(pid, { access = " .. class[1] .. " })")
        err:close()
      else
        assert(rmem.is_error(err) or tostring(err):find("bad argument #2 to 'open'", 1, true), tostring(err))
      end
    end
    assert.equal(handles, helpers.handle_count())
  end)

  it("a closed process: PROCESS_CLOSED from every method", function()
    local q = rmem.open(t.pid)
    q:close()
    local handles = helpers.handle_count()
    for _, case in ipairs(process_cases(f)) do
      local got, err = outcome(q, case[1], case[2])
      assert(got == "rmem" and err.name == "PROCESS_CLOSED", case[1] .. ": " .. tostring(err))
    end
    assert.equal(handles, helpers.handle_count())
  end)

  it("a freed region: REGION_FREED from every method", function()
    local r = p:alloc(PAGE)
    r:free()
    for _, case in ipairs(region_cases()) do
      local got, err = outcome(r, case[1], case[2])
      assert(got == "rmem" and err.name == "REGION_FREED", case[1] .. ": " .. tostring(err))
    end
  end)

  it("an exited target: an rmem.Error that says so, from every method", function()
    local t2 = helpers.start_target()
    local q <close> = rmem.open(t2.pid)
    local cases = process_cases { r = { address = q:alloc(PAGE):keep() } }
    t2:stop()
    local handles = helpers.handle_count()
    for _, case in ipairs(cases) do
      local got, err = outcome(q, case[1], case[2])
      if case[1] ~= "module" then -- module() of an exited target finds none
        assert(got == "rmem", case[1] .. ": " .. got .. " " .. tostring(err))
      end
    end
    assert.equal(handles, helpers.handle_count())
  end)
end)
