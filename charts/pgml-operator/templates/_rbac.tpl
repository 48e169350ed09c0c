{{- /*
The RBAC rules of templates/rbac.yaml (ClusterRoles) and templates/rbac-watched.yaml (Roles in
operator.watchNamespace), kept in one place. Namespaced rules: what the operator and the agent
do in the namespaces they watch. Cluster rules: Nodes and PersistentVolumes, cluster-scoped.
Each must match the tables of pgml_operator::permissions and pgml-agent's permissions.rs
(tests/e2e/tests/rbac.rs compares them).
*/ -}}
{{- define "pgml-operator.operatorNamespacedRules" }}
  # The three kinds: controllers (list/watch), finalizers (patch), server-side apply of
  # ZfsPools and seed EbsSnapshots (create, patch), scale-down and retention (delete).
  - apiGroups: ["pgml.io"]
    resources: ["pgmlclusters"]
    verbs: ["get", "list", "watch", "patch"]
  - apiGroups: ["pgml.io"]
    resources: ["zfspools", "ebssnapshots"]
    verbs: ["get", "list", "watch", "create", "patch", "delete"]
  - apiGroups: ["pgml.io"]
    resources: ["pgmlclusters/status", "zfspools/status", "ebssnapshots/status"]
    verbs: ["patch"]
  # ownerReferences with blockOwnerDeletion to a PgmlCluster (OwnerReferencesPermissionEnforcement).
  - apiGroups: ["pgml.io"]
    resources: ["pgmlclusters/finalizers"]
    verbs: ["update"]
  # A PgmlCluster's objects (owned, watched by label), applied server-side.
  - apiGroups: [""]
    resources: ["pods", "persistentvolumeclaims"]
    verbs: ["get", "list", "watch", "create", "patch", "delete"]
  - apiGroups: [""]
    resources: ["services", "configmaps"]
    verbs: ["get", "list", "watch", "create", "patch"]
  # Each cluster's NetworkPolicy <cluster>-postgres (networkPolicy.enabled), applied
  # server-side; it goes with its cluster.
  - apiGroups: ["networking.k8s.io"]
    resources: ["networkpolicies"]
    verbs: ["get", "create", "patch"]
  # Each cluster's PodDisruptionBudgets <cluster>-primary and <cluster>-replicas (owned,
  # watched by label), applied server-side; they go with their cluster.
  - apiGroups: ["policy"]
    resources: ["poddisruptionbudgets"]
    verbs: ["get", "list", "watch", "create", "patch"]
  # Credentials are created once, never updated; only their metadata is read.
  - apiGroups: [""]
    resources: ["secrets"]
    verbs: ["get", "list", "watch", "create"]
  # The instances' ServiceAccount, Role and RoleBinding (the Role grants get/list/watch on
  # its PgmlCluster and get/list/watch/patch on pods, which this role holds: RBAC's
  # escalation check).
  - apiGroups: [""]
    resources: ["serviceaccounts"]
    verbs: ["get", "create", "patch"]
  - apiGroups: ["rbac.authorization.k8s.io"]
    resources: ["roles", "rolebindings"]
    verbs: ["get", "create", "patch"]
  # Events (kube's Recorder: events.k8s.io/v1, created then patched as a series).
  - apiGroups: ["events.k8s.io"]
    resources: ["events"]
    verbs: ["create", "patch"]
{{- end }}
{{- define "pgml-operator.operatorClusterRules" }}
  # Local PersistentVolumes on the pools' mount points (cluster-scoped; deleted by the
  # PgmlCluster finalizer).
  - apiGroups: [""]
    resources: ["persistentvolumes"]
    verbs: ["get", "list", "create", "patch", "delete"]
  # Placement, zones, instance types and failover on NotReady.
  - apiGroups: [""]
    resources: ["nodes"]
    verbs: ["get", "list", "watch"]
{{- end }}
{{- define "pgml-operator.agentNamespacedRules" }}
  # Its node's ZfsPools (field selector spec.nodeName) and the EbsSnapshots it holds
  # (label pgml.io/node); it writes only their status.
  - apiGroups: ["pgml.io"]
    resources: ["zfspools", "ebssnapshots"]
    verbs: ["get", "list", "watch"]
  - apiGroups: ["pgml.io"]
    resources: ["zfspools/status", "ebssnapshots/status"]
    verbs: ["patch"]
  # Events about its ZfsPools (kube's Recorder: created, then patched as a series).
  - apiGroups: ["events.k8s.io"]
    resources: ["events"]
    verbs: ["create", "patch"]
{{- end }}
{{- define "pgml-operator.agentClusterRules" }}
  # Its own Node, checked at start-up.
  - apiGroups: [""]
    resources: ["nodes"]
    verbs: ["get"]
{{- end }}
