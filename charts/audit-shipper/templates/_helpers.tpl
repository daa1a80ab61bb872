{{/* Names: a release called "audit-shipper" (or containing it) is not doubled into "audit-shipper-audit-shipper". */}}
{{- define "audit-shipper.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "audit-shipper.fullname" -}}
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

{{- define "audit-shipper.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "audit-shipper.selectorLabels" -}}
app.kubernetes.io/name: {{ include "audit-shipper.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "audit-shipper.labels" -}}
helm.sh/chart: {{ include "audit-shipper.chart" . }}
{{ include "audit-shipper.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: log-shipper
app.kubernetes.io/part-of: audit-shipper
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "audit-shipper.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "audit-shipper.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "audit-shipper.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* Where each referenced Secret is mounted; the config paths below point into these. */}}
{{- define "audit-shipper.secretsDir" -}}/etc/audit-shipper/secrets{{- end }}

{{/*
The config file: `.Values.config` as given, with the file paths of the mounted Secrets filled in
where the user left them unset (values given in `config` always win).
*/}}
{{- define "audit-shipper.config" -}}
{{- $dir := include "audit-shipper.secretsDir" . }}
{{- $derived := dict }}
{{- with .Values.secrets.kafkaSasl }}
{{- if .secretName }}
{{- $_ := set $derived "kafka" (dict "sasl" (dict "password_file" (printf "%s/kafka-sasl/%s" $dir .passwordKey))) }}
{{- end }}
{{- end }}
{{- with .Values.secrets.kafkaTls }}
{{- if .secretName }}
{{- $tls := dict }}
{{- if .caKey }}{{- $_ := set $tls "ca_file" (printf "%s/kafka-tls/%s" $dir .caKey) }}{{- end }}
{{- if .certKey }}{{- $_ := set $tls "cert_file" (printf "%s/kafka-tls/%s" $dir .certKey) }}{{- end }}
{{- if .keyKey }}{{- $_ := set $tls "key_file" (printf "%s/kafka-tls/%s" $dir .keyKey) }}{{- end }}
{{- $kafka := get $derived "kafka" | default dict }}
{{- $_ := set $kafka "tls" $tls }}
{{- $_ := set $derived "kafka" $kafka }}
{{- end }}
{{- end }}
{{- with .Values.secrets.signingKey }}
{{- if .secretName }}
{{- $_ := set $derived "seal" (dict "signing_key_file" (printf "%s/signing-key/%s" $dir .key)) }}
{{- end }}
{{- end }}
{{- $config := mustMergeOverwrite $derived (deepCopy (.Values.config | default dict)) }}
{{- toYaml $config }}
{{- end }}

{{/* The metrics port is a product option (config.metrics.port); the pod spec follows it. */}}
{{- define "audit-shipper.metricsPort" -}}
{{- $metrics := get (.Values.config | default dict) "metrics" | default dict }}
{{- get $metrics "port" | default 2020 | int }}
{{- end }}
