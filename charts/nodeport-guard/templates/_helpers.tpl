{{/* The labels kustomize puts on every object (manifests/base/kustomization.yaml), and Helm's own. */}}
{{- define "nodeport-guard.labels" -}}
app.kubernetes.io/part-of: nodeport-guard
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "nodeport-guard.image" -}}
{{ printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
