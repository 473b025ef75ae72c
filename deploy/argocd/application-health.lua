-- Health of an Argo CD Application as its parent (app of apps) sees it, so that the child
-- Applications' sync waves wait for each other: the snippet from the Argo CD documentation.
hs = {}
hs.status = "Progressing"
hs.message = ""
if obj.status ~= nil then
  if obj.status.health ~= nil then
    hs.status = obj.status.health.status
    if obj.status.health.message ~= nil then
      hs.message = obj.status.health.message
    end
  end
end
return hs
