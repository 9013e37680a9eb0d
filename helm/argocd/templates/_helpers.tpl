{{/* Labels of every object this chart renders. */}}
{{- define "fleetgate-argocd.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: fleetgate
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/*
Refuse two environments deploying to the same namespace of the same cluster: their releases (named after
the application, not the environment) would overwrite each other.
*/}}
{{- define "fleetgate-argocd.checkDestinations" -}}
{{- $seen := dict -}}
{{- range $name, $env := .Values.environments -}}
{{- $key := printf "%s %s" $env.server $env.namespace -}}
{{- if hasKey $seen $key -}}
{{- fail (printf "environments.%s and environments.%s both deploy to namespace %q of %s: give each its own namespace" (get $seen $key) $name $env.namespace $env.server) -}}
{{- end -}}
{{- $_ := set $seen $key $name -}}
{{- end -}}
{{- end -}}
