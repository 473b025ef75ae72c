-- Argo CD health of a mailwarden.io IPAddressGroup, from its status conditions and
-- observedGeneration.
--   Degraded:    Stalled=True, or Ready=False without Reconciling=True (a cycle
--                of nested groups, an item that is not an address): services that use the
--                group refuse everyone until it is fixed.
--   Healthy:     Ready=True for the current generation.
--   Progressing: anything else (not yet observed; a nested group that does not exist yet:
--                Reconciling=True, it may be applied with this one).
-- Lua 5.1 subset (Argo CD runs gopher-lua).
local hs = {}

local function describe(c, fallback)
  local text = c.reason or fallback
  if c.message ~= nil and c.message ~= "" then
    text = text .. ": " .. c.message
  end
  return text
end

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to resolve the group"
  return hs
end

local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. string.format("%d", generation)
  return hs
end

local conditions = {}
if obj.status.conditions ~= nil then
  for _, c in ipairs(obj.status.conditions) do
    if c.type ~= nil then
      conditions[c.type] = c
    end
  end
end

local stalled = conditions["Stalled"]
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled, "Stalled")
  return hs
end

local ready = conditions["Ready"]
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready, "Resolved")
  if type(obj.status.cidrs) == "table" then
    hs.message = hs.message .. " (" .. string.format("%d", #obj.status.cidrs) .. " CIDRs)"
  end
  return hs
end

local reconciling = conditions["Reconciling"]
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(reconciling, "Reconciling")
  return hs
end

if ready ~= nil and ready.status == "False" then
  hs.status = "Degraded"
  hs.message = describe(ready, "NotReady")
  return hs
end

hs.status = "Progressing"
hs.message = "Waiting for the Ready condition"
return hs
