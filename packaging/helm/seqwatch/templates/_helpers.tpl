{{/* The release's name, or release-chart when the release's name does not hold the chart's. */}}
{{- define "seqwatch.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* What the DaemonSet, the Service and the monitors select the pods by. */}}
{{- define "seqwatch.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "seqwatch.labels" -}}
{{ include "seqwatch.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* HTTP probes on /, which answers once the programs are attached; behind a web config
(TLS, basic auth) only whether the port accepts connections. */}}
{{- define "seqwatch.probeHandler" -}}
{{- if .Values.webConfig.enabled -}}
tcpSocket: {port: metrics}
{{- else -}}
httpGet: {path: /, port: metrics}
{{- end -}}
{{- end -}}

{{- define "seqwatch.webConfigSecret" -}}
{{- .Values.webConfig.existingSecret | default (printf "%s-web" (include "seqwatch.fullname" .)) -}}
{{- end -}}
