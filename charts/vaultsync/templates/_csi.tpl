{{/*
Names, labels and the image of the CSI plugin.
*/}}
{{- define "vaultsync.csi.fullname" -}}
{{- printf "%s-csi" (include "vaultsync.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "vaultsync.csi.clusterName" -}}
{{- printf "%s-%s" (include "vaultsync.csi.fullname" .) .Release.Namespace | trunc 253 | trimSuffix "-" }}
{{- end }}

{{- define "vaultsync.csi.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vaultsync.name" . }}-csi
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "vaultsync.csi.labels" -}}
helm.sh/chart: {{ include "vaultsync.chart" . }}
{{ include "vaultsync.csi.selectorLabels" . }}
app.kubernetes.io/version: {{ (.Values.csi.image.tag | default .Chart.AppVersion) | toString | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/component: csi
app.kubernetes.io/part-of: vaultsync
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "vaultsync.csi.image" -}}
{{- printf "%s:%s" .Values.csi.image.repository (.Values.csi.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}

{{/*
The mode, checked.
*/}}
{{- define "vaultsync.csi.mode" -}}
{{- if not (has .Values.csi.mode (list "node" "provider")) }}
{{- fail "csi.mode must be node or provider" }}
{{- end }}
{{- .Values.csi.mode }}
{{- end }}
