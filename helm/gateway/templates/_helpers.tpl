{{/* <release>-gateway (or the release name if it already says gateway), at most 63 characters. */}}
{{- define "gateway.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains "gateway" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-gateway" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/*
Selector labels of one component (gateway, lake-writer, migration). The vLLM chart's NetworkPolicy admits
pods labelled app.kubernetes.io/part-of=fleetgate and app.kubernetes.io/component=gateway: only the
gateway's own pods carry both.
*/}}
{{- define "gateway.selectorLabels" -}}
app.kubernetes.io/name: gateway
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "gateway.labels" -}}
{{ include "gateway.selectorLabels" . }}
app.kubernetes.io/part-of: fleetgate
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/version: {{ include "gateway.imageTag" .root | trunc 63 | trimSuffix "-" | quote }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
fleetgate.io/environment: {{ .root.Values.environment }}
{{- end -}}

{{- define "gateway.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion -}}
{{- end -}}

{{- define "gateway.image" -}}
{{- printf "%s:%s" .Values.image.repository (include "gateway.imageTag" .) -}}
{{- end -}}

{{/* Which FLEETGATE_* variable each entry of .Values.secrets sets. */}}
{{- define "gateway.secretEnvNames" -}}
databaseUrl: FLEETGATE_DATABASE_URL
redisUrl: FLEETGATE_REDIS_URL
adminToken: FLEETGATE_ADMIN_TOKEN
s3AccessKey: FLEETGATE_S3_ACCESS_KEY
s3SecretKey: FLEETGATE_S3_SECRET_KEY
metricsToken: FLEETGATE_METRICS_TOKEN
{{- end -}}

{{/*
env entries for the configured secrets among .fields (names of .Values.secrets entries): each process
gets only the secrets it needs.
*/}}
{{- define "gateway.secretEnv" -}}
{{- $names := include "gateway.secretEnvNames" . | fromYaml -}}
{{- range .fields }}
{{- $ref := index $.root.Values.secrets . }}
{{- if $ref.name }}
- name: {{ index $names . }}
  valueFrom:
    secretKeyRef:
      name: {{ $ref.name }}
      key: {{ $ref.key }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Settings the chart owns: the pod's state directory (spool, SQLite) and the default environment. */}}
{{- define "gateway.stateDir" -}}/var/lib/fleetgate{{- end -}}

{{- define "gateway.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "gateway.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}
