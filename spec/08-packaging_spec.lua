-- The rockspec builds what the tree holds: every Lua file of lua/rmem is a
-- module, and the C module's sources exist.
local lfs = require "lfs"
local helpers = require "spec.helpers"

local function load_rockspec(name)
  local env = {}
  local chunk = assert(loadfile(helpers.root .. "/" .. (name or "rmem-scm-1.rockspec"), "t", env))
  chunk()
  return env
end

local function read(path)
  return helpers.read_file(helpers.root .. "/" .. path)
end

describe("rmem-scm-1.rockspec", function()
  local spec = load_rockspec()

  it("is format 3.0 for Lua 5.4 with a builtin build", function()
    assert.equal("3.0", spec.rockspec_format)
    assert.same({ "lua >= 5.4, < 5.5" }, spec.dependencies)
    assert.equal("builtin", spec.build.type)
    assert.equal("busted", spec.test.type)
  end)

  it("lists every Lua file of lua/rmem as a module, and nothing else", function()
    local files = {}
    for name in lfs.dir(helpers.root .. "/lua/rmem") do
      local mod = name:match("^(.-)%.lua$")
      if mod then
        files[mod == "init" and "rmem" or "rmem." .. mod] = "lua/rmem/" .. name
      end
    end
    for _, plat in pairs(spec.build.platforms) do
      local listed = {}
      for mod, src in pairs(plat.modules) do
        if type(src) == "string" then listed[mod] = src end
      end
      assert.same(files, listed)
    end
  end)

  it("builds rmem.core from sources that exist, one backend per platform", function()
    assert.is_nil(spec.build.modules) -- platform overrides merge into it key by key
    assert.same({ "windows", "linux" }, spec.supported_platforms)
    for plat, backend in pairs { windows = "src/backend_win.c", linux = "src/backend_linux.c" } do
      local core = spec.build.platforms[plat].modules["rmem.core"]
      assert.equal("src/core.c", core.sources[1])
      assert.equal(backend, core.sources[2])
      for _, src in ipairs(core.sources) do
        assert.is_table(lfs.attributes(helpers.root .. "/" .. src), src)
      end
    end
  end)

  it("builds rmem.disasm on its own, against Capstone declared as an external dependency", function()
    for _, plat in ipairs { "unix", "windows" } do
      assert.equal("capstone/capstone.h", spec.external_dependencies.platforms[plat].CAPSTONE.header)
    end
    for _, plat in pairs(spec.build.platforms) do
      local d = plat.modules["rmem.disasm"]
      assert.same({ "src/disasm.c" }, d.sources)
      assert.same({ "capstone" }, d.libraries)
      assert.same({ "$(CAPSTONE_INCDIR)" }, d.incdirs)
    end
  end)
end)

describe("the release", function()
  local scm = load_rockspec()
  local version = require("rmem")._VERSION:match("^rmem (%S+)$")

  it("has a rockspec for the version in rmem._VERSION, the scm one but for version and tag", function()
    local name = ("rmem-%s-1.rockspec"):format(version)
    local release = load_rockspec(name)
    assert.equal(version .. "-1", release.version)
    assert.equal("v" .. version, release.source.tag)
    local a = read(name):gsub('version = "[^"]*"', ""):gsub('\n  tag = "[^"]*",', "")
    local b = read("rmem-scm-1.rockspec"):gsub('version = "[^"]*"', "")
    assert.equal(b, a)
  end)

  it("installs the rmem command and the docs folder, which exist", function()
    assert.same({ rmem = "scripts/rmem" }, scm.build.install.bin)
    assert.matches("^#!/usr/bin/env lua5.4\n", read("scripts/rmem"))
    assert.same({ "examples", "docs" }, scm.build.copy_directories)
    assert.is_string(lfs.attributes(helpers.root .. "/docs/index.html", "mode"))
    assert.is_string(lfs.attributes(helpers.root .. "/docs/modules/rmem.html", "mode"))
  end)

  it("ships the license the rockspec names, and a changelog that names the version", function()
    assert.equal("MIT", scm.description.license)
    assert.matches("^MIT License\n", read("LICENSE"))
    assert.matches("\n## " .. version:gsub("%p", "%%%0") .. " ", read("CHANGELOG.md"))
  end)
end)
