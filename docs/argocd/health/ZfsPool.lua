-- Argo CD health check for pgml.io/ZfsPool (docs/argocd.md).
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

local function is(c, status)
  return c ~= nil and c.status == status
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
    local p = condition("Progressing")
    if is(p, "True") then
      return "Progressing", "ZfsPool is being deleted: " .. says(p)
    end
    return "Progressing", "ZfsPool is being deleted"
  end
  if st == nil or st.phase == nil then
    return "Progressing", "Waiting for the operator to report the pool's status"
  end
  if meta.generation ~= nil and (st.observedGeneration == nil or st.observedGeneration < meta.generation) then
    return "Progressing", "Waiting for the operator to observe generation " .. tostring(meta.generation)
      .. " (status describes generation " .. tostring(st.observedGeneration) .. ")"
  end
  local specValid = condition("SpecValid")
  if is(specValid, "False") then
    return "Degraded", "Spec invalid: " .. says(specValid)
  end
  local ready = condition("Ready")
  local degraded = condition("Degraded")
  local progressing = condition("Progressing")
  if st.phase == "Failed" then
    if is(degraded, "True") then
      return "Degraded", "Failed: " .. says(degraded)
    end
    return "Degraded", "Failed: " .. says(ready)
  end
  if is(degraded, "True") then
    return "Degraded", says(degraded)
  end
  if is(ready, "True") then
    if is(progressing, "True") then
      -- Serving while EBS modifies the volumes to a new spec.
      return "Progressing", says(progressing)
    end
    if progressing ~= nil and progressing.reason == "ModificationBudgetSpent" then
      -- Serving, but a spec change waits for AWS's modification budget.
      return "Progressing", says(progressing)
    end
    return "Healthy", says(ready)
  end
  if is(progressing, "False") and st.phase ~= "Pending" then
    -- Not ready and nothing moves (e.g. a volume attached to another instance).
    return "Degraded", st.phase .. ": " .. says(ready)
  end
  if is(progressing, "True") then
    return "Progressing", says(progressing)
  end
  if ready ~= nil then
    return "Progressing", says(ready)
  end
  return "Progressing", st.phase
end

local status, message = health()
return { status = status, message = message }
