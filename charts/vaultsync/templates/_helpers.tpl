{{/*
The chart name.
*/}}
{{- define "vaultsync.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of namespaced resources: <release>-vaultsync, or the release name if it already contains the chart
name. Truncated to 63 characters (some Kubernetes name fields are limited to that by the DNS spec).
*/}}
{{- define "vaultsync.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The name of cluster-scoped resources (ClusterRole, ClusterRoleBinding): the full name plus the release namespace,
so two releases of the same name in different namespaces do not take each other's objects.
*/}}
{{- define "vaultsync.clusterName" -}}
{{- printf "%s-%s" (include "vaultsync.fullname" .) .Release.Namespace | trunc 253 | trimSuffix "-" }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "vaultsync.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object.
*/}}
{{- define "vaultsync.labels" -}}
helm.sh/chart: {{ include "vaultsync.chart" . }}
{{ include "vaultsync.selectorLabels" . }}
app.kubernetes.io/version: {{ (.Values.image.tag | default .Chart.AppVersion) | toString | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: vaultsync
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Labels that select the operator pods.
*/}}
{{- define "vaultsync.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vaultsync.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The operator's ServiceAccount name.
*/}}
{{- define "vaultsync.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "vaultsync.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The operator image.
*/}}
{{- define "vaultsync.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}

{{/*
The metrics port (/metrics, /healthz, /readyz): the container port, and the Service port.
*/}}
{{- define "vaultsync.metricsPort" -}}
{{- int .Values.metrics.port }}
{{- end }}

{{/*
The Event Grid endpoint's port, checked: a port number other than the metrics port.
*/}}
{{- define "vaultsync.eventGridPort" -}}
{{- $port := int .Values.eventGrid.port }}
{{- if eq $port (int .Values.metrics.port) }}
{{- fail (printf "eventGrid.port must differ from metrics.port (%d)" $port) }}
{{- end }}
{{- $port }}
{{- end }}

{{/*
The operator's replicas: replicaCount, or when sharding one per shard plus the standbys.
*/}}
{{- define "vaultsync.replicas" -}}
{{- $shards := int .Values.sharding.shards }}
{{- if gt $shards 1 }}
{{- add $shards (int .Values.sharding.standbys) }}
{{- else }}
{{- .Values.replicaCount }}
{{- end }}
{{- end }}
