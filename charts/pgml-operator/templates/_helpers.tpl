{{/*
The chart's name (the chart, or nameOverride).
*/}}
{{- define "pgml-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fullname F: "pgml-operator" when the release name contains it, else "<release>-pgml-operator"
(fullnameOverride wins). Truncated to 52 characters so that "F-leader-election" (the longest
derived name) still fits 63.
*/}}
{{- define "pgml-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "pgml-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object.
*/}}
{{- define "pgml-operator.labels" -}}
helm.sh/chart: {{ include "pgml-operator.chart" . }}
app.kubernetes.io/name: {{ include "pgml-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: pgml-operator
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels: operator and agent (the component tells them apart; selectors are immutable).
*/}}
{{- define "pgml-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pgml-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "pgml-operator.agentSelectorLabels" -}}
app.kubernetes.io/name: {{ include "pgml-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end }}

{{/*
ServiceAccount names: F (operator), F-agent (agent).
*/}}
{{- define "pgml-operator.serviceAccountName" -}}
{{- include "pgml-operator.fullname" . }}
{{- end }}

{{- define "pgml-operator.agentServiceAccountName" -}}
{{- printf "%s-agent" (include "pgml-operator.fullname" .) }}
{{- end }}

{{/*
Images: repository:tag (tag defaults to the chart's appVersion), or repository@digest.
*/}}
{{- define "pgml-operator.operatorImage" -}}
{{- $i := .Values.operator.image -}}
{{- if $i.digest -}}
{{- printf "%s@%s" $i.repository $i.digest -}}
{{- else -}}
{{- printf "%s:%s" $i.repository (default .Chart.AppVersion $i.tag) -}}
{{- end -}}
{{- end }}

{{- define "pgml-operator.agentImage" -}}
{{- $i := .Values.agent.image -}}
{{- if $i.digest -}}
{{- printf "%s@%s" $i.repository $i.digest -}}
{{- else -}}
{{- printf "%s:%s" $i.repository (default .Chart.AppVersion $i.tag) -}}
{{- end -}}
{{- end }}
