-- Runs an Argo CD health script the way Argo CD does: the resource in the global `obj`, only
-- the base, string, table and math libraries (no io, os, require), the script's return value
-- is the health. Usage: lua5.4 harness.lua SCRIPT OBJECT  (OBJECT: a Lua file returning obj)
local script_path, object_path = arg[1], arg[2]
local obj = dofile(object_path)
local env = {
  obj = obj,
  assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs,
  pcall = pcall, select = select, tonumber = tonumber, tostring = tostring, type = type,
  string = string, table = table, math = math,
}
local chunk, err = loadfile(script_path, "t", env)
if chunk == nil then
  io.stderr:write("cannot load " .. script_path .. ": " .. err .. "\n")
  os.exit(2)
end
local ok, hs = pcall(chunk)
if not ok then
  io.stderr:write("script failed: " .. tostring(hs) .. "\n")
  os.exit(3)
end
if type(hs) ~= "table" then
  io.stderr:write("script returned " .. type(hs) .. ", not a table\n")
  os.exit(4)
end
io.write("status=", tostring(hs.status), "\n")
io.write("message=", tostring(hs.message), "\n")
