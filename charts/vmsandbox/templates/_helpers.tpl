{{/* Chart name, overridable. */}}
{{- define "vmsandbox.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Prefix of every object name: <release>-<name>, or the release name when it already holds the chart name. */}}
{{- define "vmsandbox.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "vmsandbox.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object; pass (dict "ctx" $ "component" "operator"). */}}
{{- define "vmsandbox.labels" -}}
helm.sh/chart: {{ include "vmsandbox.chart" .ctx }}
{{ include "vmsandbox.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: vmsandbox
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The labels a component's pods are selected by (immutable in Deployments and DaemonSets). */}}
{{- define "vmsandbox.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vmsandbox.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "vmsandbox.operator.fullname" -}}
{{- printf "%s-operator" (include "vmsandbox.fullname" .) -}}
{{- end -}}

{{- define "vmsandbox.agent.fullname" -}}
{{- printf "%s-agent" (include "vmsandbox.fullname" .) -}}
{{- end -}}

{{- define "vmsandbox.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (include "vmsandbox.operator.fullname" .) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "vmsandbox.agent.serviceAccountName" -}}
{{- if .Values.agent.serviceAccount.create -}}
{{- default (include "vmsandbox.agent.fullname" .) .Values.agent.serviceAccount.name -}}
{{- else -}}
{{- required "agent.serviceAccount.name is required when agent.serviceAccount.create is false" .Values.agent.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository:tag, or repository@digest when a digest pins it. */}}
{{- define "vmsandbox.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "vmsandbox.webhook.secretName" -}}
{{- if eq .Values.webhook.tls.mode "secret" -}}
{{- .Values.webhook.tls.secretName -}}
{{- else -}}
{{- printf "%s-webhook-tls" (include "vmsandbox.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "vmsandbox.webhook.serviceName" -}}
{{- printf "%s-webhook" (include "vmsandbox.fullname" .) -}}
{{- end -}}

{{- define "vmsandbox.subresources.secretName" -}}
{{- if eq .Values.subresources.tls.mode "secret" -}}
{{- .Values.subresources.tls.secretName -}}
{{- else -}}
{{- printf "%s-subresources-tls" (include "vmsandbox.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "vmsandbox.subresources.serviceName" -}}
{{- printf "%s-subresources" (include "vmsandbox.fullname" .) -}}
{{- end -}}
