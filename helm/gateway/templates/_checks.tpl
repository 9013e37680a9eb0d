{{/*
Checks across several values that the schema cannot express with a clear message; included from the
Deployment, so every render runs them.
*/}}
{{- define "gateway.checks" -}}
{{- $s := .Values.secrets -}}
{{- if not $s.adminToken.name -}}
{{- fail "secrets.adminToken.name is required: the Secret holding the admin bearer token (FLEETGATE_ADMIN_TOKEN)" -}}
{{- end -}}
{{- $replicas := ternary .Values.autoscaling.maxReplicas .Values.replicaCount .Values.autoscaling.enabled | int -}}
{{- if and (gt (int .Values.workers) 1) (not $s.redisUrl.name) -}}
{{- fail (printf "workers=%d needs secrets.redisUrl: without Redis each process enforces budgets and rate limits alone; use workers: 1" (int .Values.workers)) -}}
{{- end -}}
{{- if gt $replicas 1 -}}
{{- if not $s.redisUrl.name -}}
{{- fail (printf "%d replicas need secrets.redisUrl: without Redis each pod enforces budgets and rate limits alone" $replicas) -}}
{{- end -}}
{{- if not $s.databaseUrl.name -}}
{{- fail (printf "%d replicas need secrets.databaseUrl (PostgreSQL): SQLite lives inside one pod" $replicas) -}}
{{- end -}}
{{- end -}}
{{- $sink := .Values.config.usage_sink | default "spool" -}}
{{- if and (eq $sink "redis-stream") (not $s.redisUrl.name) -}}
{{- fail "config.usage_sink=redis-stream needs secrets.redisUrl" -}}
{{- end -}}
{{- if and .Values.lakeWriter.enabled (ne $sink "redis-stream") -}}
{{- fail (printf "lakeWriter.enabled needs config.usage_sink=redis-stream (it is %q): the writer reads the Redis stream" $sink) -}}
{{- end -}}
{{- if .Values.devSecret.create -}}
{{- if eq .Values.environment "production" -}}
{{- fail "devSecret.create is for development only: in production reference existing Secrets under secrets.*" -}}
{{- end -}}
{{- range $field, $ref := $s -}}
{{- if and (eq $ref.name $.Values.devSecret.name) (not (hasKey ($.Values.devSecret.stringData | default dict) $ref.key)) -}}
{{- fail (printf "secrets.%s points at the dev Secret %q: set devSecret.stringData.%s" $field $ref.name $ref.key) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (not (.Values.resources.requests | default dict).cpu) -}}
{{- fail "autoscaling on CPU needs resources.requests.cpu" -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
{{- fail (printf "autoscaling.minReplicas=%d is above autoscaling.maxReplicas=%d" (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
{{- end -}}
{{- if .Values.podDisruptionBudget.enabled -}}
{{- $pdb := .Values.podDisruptionBudget -}}
{{- if eq (hasKey $pdb "minAvailable") (hasKey $pdb "maxUnavailable") -}}
{{- fail "podDisruptionBudget: set exactly one of minAvailable and maxUnavailable" -}}
{{- end -}}
{{- $min := ternary .Values.autoscaling.minReplicas .Values.replicaCount .Values.autoscaling.enabled | int -}}
{{- if and (hasKey $pdb "minAvailable") (not (kindIs "string" $pdb.minAvailable)) (ge (int $pdb.minAvailable) $min) -}}
{{- fail (printf "podDisruptionBudget.minAvailable=%d with %d replica(s) would block every node drain: lower it or add replicas" (int $pdb.minAvailable) $min) -}}
{{- end -}}
{{- end -}}
{{- end -}}
