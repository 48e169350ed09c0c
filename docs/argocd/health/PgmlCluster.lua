-- Argo CD health check for pgml.io/PgmlCluster (docs/argocd.md).
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
    return "Progressing", "PgmlCluster is being deleted"
  end
  if st == nil or st.phase == nil then
    return "Progressing", "Waiting for the operator to report the cluster's status"
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
  if st.phase == "Failed" then
    if is(degraded, "True") then
      return "Degraded", "Failed: " .. says(degraded)
    end
    return "Degraded", "Failed: " .. says(ready)
  end
  -- Degraded covers a primary or replicas not ready, a failover, fenced instances and
  -- pools that are not ONLINE.
  if is(degraded, "True") then
    return "Degraded", says(degraded)
  end
  -- Backups configured but failing: the cluster serves, point-in-time recovery or restore
  -- does not work as the spec asks.
  for _, t in ipairs({ "ContinuousArchiving", "LastBackupSucceeded", "LastSnapshotSucceeded" }) do
    local c = condition(t)
    if is(c, "False") then
      return "Degraded", t .. " is False: " .. says(c)
    end
  end
  if is(ready, "True") then
    return "Healthy", says(ready)
  end
  local progressing = condition("Progressing")
  if is(progressing, "True") then
    return "Progressing", says(progressing)
  end
  if st.phase == "Pending" then
    return "Progressing", says(ready)
  end
  if ready ~= nil then
    return "Degraded", st.phase .. ": " .. says(ready)
  end
  return "Progressing", st.phase
end

local status, message = health()
return { status = status, message = message }
