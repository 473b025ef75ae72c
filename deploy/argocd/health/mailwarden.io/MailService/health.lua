-- Argo CD health of a mailwarden.io MailService, from its status conditions (Ready,
-- Reconciling, Stalled: kstatus conventions,
-- https://github.com/kubernetes-sigs/cli-utils/blob/master/pkg/kstatus/README.md) and
-- observedGeneration.
--   Degraded:    Stalled=True: nothing changes until someone edits something (invalid spec,
--                a group cycle, a child the API server refuses, a rollout past its deadline,
--                a child's name taken by an object someone else owns);
--                also Ready=False for such a reason in a status without Stalled/Reconciling.
--   Suspended:   a Manual service that is stopped (Ready=False, reason Stopped): it is where
--                its administrator wants it, like a suspended CronJob, and starts with
--                kubectl annotate msvc NAME mailwarden.io/state=Running.
--   Healthy:     Ready=True for the current generation.
--   Progressing: anything else: not yet observed, starting, or waiting for something that
--                clears by itself (Reconciling=True: the backend, a group, a held address,
--                pods in back-off). Applied together with its backend or its group, a
--                MailService must not fail the sync.
-- Lua 5.1 subset (Argo CD runs gopher-lua).
local hs = {}
-- The operator's Ready=False reasons that set Stalled=True (conditions.READY_FALSE).
local FAILURES = {
  InvalidSpec = true,
  IPAddressGroupCycle = true,
  ApplyFailed = true,
  ProgressDeadlineExceeded = true,
  OwnedElsewhere = true,
}

local function describe(c, fallback)
  local text = c.reason or fallback
  if c.message ~= nil and c.message ~= "" then
    text = text .. ": " .. c.message
  end
  return text
end

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report a status"
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
  hs.message = describe(ready, "Ready")
  return hs
end

if ready ~= nil and ready.status == "False" and ready.reason == "Stopped" then
  hs.status = "Suspended"
  hs.message = describe(ready, "Stopped")
  return hs
end

local reconciling = conditions["Reconciling"]
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(reconciling, "Reconciling")
  return hs
end

if ready ~= nil and ready.status == "False" and ready.reason ~= nil and FAILURES[ready.reason] then
  hs.status = "Degraded"
  hs.message = describe(ready, "NotReady")
  return hs
end

hs.status = "Progressing"
if ready ~= nil then
  hs.message = describe(ready, "NotReady")
else
  hs.message = "Waiting for the Ready condition"
end
return hs
