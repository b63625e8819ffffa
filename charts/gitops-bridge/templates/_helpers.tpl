{{/* Chart name, truncated to the 63 characters a label allows. */}}
{{- define "gitops-bridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name, prefixed by the chart name unless it already contains it. */}}
{{- define "gitops-bridge.fullname" -}}
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

{{- define "gitops-bridge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "gitops-bridge.labels" -}}
helm.sh/chart: {{ include "gitops-bridge.chart" . }}
{{ include "gitops-bridge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: gitops-bridge
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "gitops-bridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gitops-bridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one role's resources: call with (dict "ctx" $ "component" "web"). */}}
{{- define "gitops-bridge.componentLabels" -}}
{{ include "gitops-bridge.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "gitops-bridge.componentSelectorLabels" -}}
{{ include "gitops-bridge.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "gitops-bridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "gitops-bridge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "gitops-bridge.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "gitops-bridge.configMapName" -}}
{{- default (printf "%s-config" (include "gitops-bridge.fullname" .)) .Values.config.existingConfigMap }}
{{- end }}

{{- define "gitops-bridge.configMapKey" -}}
{{- if .Values.config.existingConfigMap }}{{ .Values.config.existingConfigMapKey }}{{ else }}bridge.yaml{{ end }}
{{- end }}

{{/* Environment shared by both roles. Tokens never appear here: they are files in the mounted Secret.
The processes bind 127.0.0.1 unless told otherwise; in a pod they must listen on every interface. */}}
{{- define "gitops-bridge.env" -}}
- name: BRIDGE_CONFIG
  value: /etc/gitops-bridge/{{ include "gitops-bridge.configMapKey" . }}
- name: BRIDGE_HOST
  value: "0.0.0.0"
- name: BRIDGE_SECRETS_DIR
  value: /var/run/secrets/gitops-bridge
- name: BRIDGE_LOG_JSON
  value: {{ .Values.config.logJson | quote }}
- name: BRIDGE_LOG_LEVEL
  value: {{ .Values.config.logLevel | quote }}
- name: HOME
  value: /tmp
{{- if .Values.redis.existingSecret }}
- name: BRIDGE_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret }}
      key: {{ .Values.redis.existingSecretKey }}
{{- else }}
- name: BRIDGE_REDIS_URL
  value: {{ required "set redis.url or redis.existingSecret" .Values.redis.url | quote }}
{{- end }}
{{- range $key, $value := .Values.config.settings }}
- name: {{ printf "BRIDGE_%s" $key | upper }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}

{{/* Volumes shared by both roles. */}}
{{- define "gitops-bridge.volumes" -}}
- name: config
  configMap:
    name: {{ include "gitops-bridge.configMapName" . }}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- if .Values.secrets.existingSecret }}
- name: secrets
  secret:
    secretName: {{ .Values.secrets.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{- define "gitops-bridge.volumeMounts" -}}
- name: config
  mountPath: /etc/gitops-bridge
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if .Values.secrets.existingSecret }}
- name: secrets
  mountPath: /var/run/secrets/gitops-bridge
  readOnly: true
{{- end }}
{{- end }}

{{/* The routing file as the ConfigMap holds it: text (`--set-file`) verbatim, YAML serialised, or an empty
routing when unset (`config.routing` defaults to null so that neither a table nor a string warns when replaced). */}}
{{- define "gitops-bridge.routing" -}}
{{- if kindIs "string" .Values.config.routing }}
{{- .Values.config.routing | trim }}
{{- else if .Values.config.routing }}
{{- toYaml .Values.config.routing }}
{{- else }}
repositories: {}
routes: []
{{- end }}
{{- end }}

{{/* Pod annotations that roll the pods when the configuration changes: the routing ConfigMap's content (the one
the pre-install/pre-upgrade check validated) and the settings. */}}
{{- define "gitops-bridge.checksums" -}}
checksum/config: {{ toYaml (omit .Values.config "routing") | sha256sum }}
checksum/routing: {{ include "gitops-bridge.routing" . | sha256sum }}
{{- end }}
