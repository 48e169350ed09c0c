-- Argo CD health check for pgml.io/EbsSnapshot (docs/argocd.md).
-- Runs in Argo CD's sandbox: base, table and a safe os only (no string or math library).
local function condition(t)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == t then
      return c
    end
  end
  return nil
end

-- "Reason: message" of a condition.
local function says(c)
  if c == nil then
    return ""
  end
  local reason = c.reason or ""
  local message = c.message or ""
  if reason ~= "" and message ~= "" then
    return reason .. ": " .. message
  end
  return reason .. message
end

local function health()
  local meta = obj.metadata or {}
  local st = obj.status
  if meta.deletionTimestamp ~= nil then
    return "Progressing", "EbsSnapshot is being deleted"
  end
  if st == nil or st.phase == nil then
    return "Progressing", "Waiting for the operator to report the snapshot's status"
  end
  local ready = condition("Ready")
  -- Completed and Failed are final: the operator does not revisit them when the spec's
  -- mutable fields (tags, deletionPolicy) change, so the generation is not compared.
  if st.phase == "Completed" then
    return "Healthy", says(ready)
  end
  if st.phase == "Failed" then
    return "Degraded", "Failed: " .. says(ready)
  end
  if meta.generation ~= nil and (st.observedGeneration == nil or st.observedGeneration < meta.generation) then
    return "Progressing", "Waiting for the operator to observe generation " .. tostring(meta.generation)
      .. " (status describes generation " .. tostring(st.observedGeneration) .. ")"
  end
  local progressing = condition("Progressing")
  if progressing ~= nil and progressing.status == "True" then
    return "Progressing", says(progressing)
  end
  if ready ~= nil then
    return "Progressing", says(ready)
  end
  return "Progressing", st.phase
end

local status, message = health()
return { status = status, message = message }
