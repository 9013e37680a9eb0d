{{/*
Checks across several values, which values.schema.json cannot express with a clear message.
Included once, from the Deployment, so every render runs them.
*/}}
{{- define "vllm.checks" -}}
{{- $gpus := int .Values.resources.gpu.count -}}
{{- $tp := int .Values.vllm.tensorParallelSize -}}
{{- if and (gt $gpus 0) (gt $tp $gpus) -}}
{{- fail (printf "vllm.tensorParallelSize=%d needs %d GPUs per pod, but resources.gpu.count=%d" $tp $tp $gpus) -}}
{{- end -}}
{{- if eq .Values.updateStrategy.type "RollingUpdate" -}}
{{- $ru := .Values.updateStrategy.rollingUpdate | default dict -}}
{{- if and (eq (toString ($ru.maxSurge | default 0)) "0") (eq (toString ($ru.maxUnavailable | default 0)) "0") -}}
{{- fail "updateStrategy.rollingUpdate: maxSurge and maxUnavailable cannot both be 0 (on single-GPU nodes use maxSurge: 0, maxUnavailable: 1)" -}}
{{- end -}}
{{- end -}}
{{- if .Values.autoscaling.enabled -}}
{{- if gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas) -}}
{{- fail (printf "autoscaling.minReplicas=%d is above autoscaling.maxReplicas=%d" (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
{{- end -}}
{{- end -}}
{{- if .Values.podDisruptionBudget.enabled -}}
{{- $pdb := .Values.podDisruptionBudget -}}
{{- if eq (hasKey $pdb "minAvailable") (hasKey $pdb "maxUnavailable") -}}
{{- fail "podDisruptionBudget: set exactly one of minAvailable and maxUnavailable" -}}
{{- end -}}
{{- $replicas := ternary .Values.autoscaling.minReplicas .Values.replicaCount .Values.autoscaling.enabled | int -}}
{{- if and (hasKey $pdb "minAvailable") (not (kindIs "string" $pdb.minAvailable)) -}}
{{- if ge (int $pdb.minAvailable) $replicas -}}
{{- fail (printf "podDisruptionBudget.minAvailable=%d with %d replica(s) would block every node drain: lower it or add replicas" (int $pdb.minAvailable) $replicas) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
