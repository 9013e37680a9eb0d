{{/*
Names. The registry model name (model.name) may hold "/", ":", "." and upper case; Kubernetes names may not.
ONE rule turns it into a DNS-1035 label, used for every object:
  lower-case it; replace each run of characters outside [a-z0-9] with "-"; trim "-" at both ends;
  prefix "m-" if it does not start with a letter.
  e.g. meta-llama/Llama-3.1-8B -> meta-llama-llama-3-1-8b, qwen:7b -> qwen-7b, 01-ai/Yi-34B -> m-01-ai-yi-34b
model.kubernetesName overrides the result (the schema checks it is a DNS-1035 label).
*/}}
{{- define "vllm.modelSlug" -}}
{{- if .Values.model.kubernetesName -}}
{{- .Values.model.kubernetesName -}}
{{- else -}}
{{- $name := required "model.name is required: the registry model name, e.g. --set model.name=qwen:7b" .Values.model.name -}}
{{- $slug := regexReplaceAll "[^a-z0-9]+" (lower $name) "-" | trimAll "-" -}}
{{- if not $slug -}}
{{- fail (printf "model.name %q has no letters or digits to name Kubernetes objects after: set model.kubernetesName" $name) -}}
{{- end -}}
{{- if not (regexMatch "^[a-z]" $slug) -}}
{{- $slug = printf "m-%s" $slug -}}
{{- end -}}
{{- $slug -}}
{{- end -}}
{{- end -}}

{{/*
The name of every object and of the Service: {model}-{env}[-{nameSuffix}], at most 63 characters (a DNS-1035
label); the model part is shortened when needed, never the environment or the suffix.
*/}}
{{- define "vllm.fullname" -}}
{{- $suffix := printf "-%s" .Values.environment -}}
{{- if .Values.nameSuffix -}}
{{- $suffix = printf "%s-%s" $suffix .Values.nameSuffix -}}
{{- end -}}
{{- $model := include "vllm.modelSlug" . | trunc (int (sub 63 (len $suffix))) | trimSuffix "-" -}}
{{- printf "%s%s" $model $suffix -}}
{{- end -}}

{{/* The endpoint the registry routes to: exactly the Service this chart creates. */}}
{{- define "vllm.endpointURL" -}}
{{- printf "http://%s.%s.svc.%s:%d" (include "vllm.fullname" .) .Release.Namespace .Values.clusterDomain (int .Values.service.port) -}}
{{- end -}}

{{- define "vllm.selectorLabels" -}}
app.kubernetes.io/name: vllm
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "vllm.labels" -}}
{{ include "vllm.selectorLabels" . }}
app.kubernetes.io/component: inference
{{ include "vllm.commonLabels" . }}
{{- end -}}

{{/* Labels of the registration Jobs: not the Deployment's selector, so the Service, PDB and NetworkPolicy ignore them. */}}
{{- define "vllm.registrationLabels" -}}
app.kubernetes.io/name: vllm-registration
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: registration
{{ include "vllm.commonLabels" . }}
{{- end -}}

{{- define "vllm.commonLabels" -}}
app.kubernetes.io/part-of: fleetgate
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ include "vllm.imageTag" . | trunc 63 | trimSuffix "-" | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
fleetgate.io/model: {{ include "vllm.modelSlug" . | trunc 63 | trimSuffix "-" }}
fleetgate.io/environment: {{ .Values.environment }}
{{- end -}}

{{/* The registry model name, kept verbatim where labels cannot hold it. */}}
{{- define "vllm.annotations" -}}
fleetgate.io/model-name: {{ .Values.model.name | quote }}
fleetgate.io/endpoint: {{ include "vllm.endpointURL" . | quote }}
{{- end -}}

{{- define "vllm.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion -}}
{{- end -}}

{{/* Where vLLM loads the weights from: /models, or a directory inside it. */}}
{{- define "vllm.modelPath" -}}
{{- if .Values.model.path -}}
{{- printf "/models/%s" (.Values.model.path | trimPrefix "/") -}}
{{- else -}}
/models
{{- end -}}
{{- end -}}

{{/* A NetworkPolicyPeer: pods with these labels, in `namespace` (empty: the release's namespace). */}}
{{- define "vllm.peer" -}}
{{- if .namespace }}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ .namespace }}
  podSelector:
    matchLabels:
      {{- toYaml .podSelector | nindent 6 }}
{{- else }}
- podSelector:
    matchLabels:
      {{- toYaml .podSelector | nindent 6 }}
{{- end }}
{{- end -}}
