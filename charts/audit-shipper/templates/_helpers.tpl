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

{{/*
The verifier (`shipper verify --follow`). Its pods carry a name label of their own: the DaemonSet's
selector (immutable) and the shipper's Service must never select them, nor the verifier's theirs.
*/}}
{{- define "audit-shipper.verifierName" -}}
{{- printf "%s-verifier" (include "audit-shipper.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{- define "audit-shipper.verifierMetricsService" -}}
{{- printf "%s-metrics" (include "audit-shipper.verifierName" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{- define "audit-shipper.verifierSelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-verifier" (include "audit-shipper.name" . | trunc 54 | trimSuffix "-") }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "audit-shipper.verifierLabels" -}}
helm.sh/chart: {{ include "audit-shipper.chart" . }}
{{ include "audit-shipper.verifierSelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: verifier
app.kubernetes.io/part-of: audit-shipper
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Where the verifier's public keys are mounted. */}}
{{- define "audit-shipper.publicKeyDir" -}}/etc/audit-shipper/public-key{{- end }}

{{/*
The verifier's command line and the Secrets it mounts, decided together, as YAML
{args: [...], secrets: [{name, secretName, items}]} (each Secret mounted at <secretsDir>/<name>).
Kafka settings come from the shipper's rendered config, so a path the user set in `config` wins here
as it does for the shipper; the Secrets mounted are the shipper's Kafka ones (or the verifier's own
identity), never the signing key.
*/}}
{{- define "audit-shipper.verifierPlan" -}}
{{- $v := .Values.verifier }}
{{- $dir := include "audit-shipper.secretsDir" . }}
{{- $kafka := get (include "audit-shipper.config" . | fromYaml) "kafka" | default dict }}
{{- $bootstrap := $v.kafka.bootstrapServers | default (get $kafka "bootstrap_servers") }}
{{- if not $bootstrap }}
{{- fail "verifier: set verifier.kafka.bootstrapServers or config.kafka.bootstrap_servers" }}
{{- end }}
{{- $topics := $v.topics | default list }}
{{- if not $topics }}
{{- $topic := get $kafka "topic" | default "logs" }}
{{- if contains "{" $topic }}
{{- fail (printf "verifier: config.kafka.topic %q is a template; list the topics it yields in verifier.topics" $topic) }}
{{- end }}
{{- $topics = list $topic }}
{{- end }}
{{- $args := list "verify" "--follow" "--group" ($v.group | default (include "audit-shipper.verifierName" .)) "--bootstrap-servers" $bootstrap }}
{{- range $topics }}
{{- $args = concat $args (list "--topic" .) }}
{{- end }}
{{- with $v.exchangeTopic }}
{{- $args = concat $args (list "--exchange-topic" .) }}
{{- end }}
{{- /* int64: helm holds numbers as floats, and a large one would print as 1e+06 */}}
{{- $args = concat $args (list "--on-violation" $v.onViolation "--grace" (toString $v.grace) "--stale-after" (toString $v.staleAfter) "--commit-every" (toString $v.commitEvery) "--window" ($v.window | int64 | toString) "--metrics-port" ($v.metricsPort | int64 | toString)) }}
{{- with $v.publicKey }}
{{- if and .configMapName .secretName }}
{{- fail "verifier.publicKey: give configMapName or secretName, not both" }}
{{- end }}
{{- if or .configMapName .secretName }}
{{- if not .keys }}
{{- fail "verifier.publicKey.keys: name at least one key of the ConfigMap or Secret" }}
{{- end }}
{{- if and .secretName (eq .secretName $.Values.secrets.signingKey.secretName) (has $.Values.secrets.signingKey.key .keys) }}
{{- fail (printf "verifier.publicKey: %s/%s is the private signing key (secrets.signingKey); give the verifier the public key only" .secretName $.Values.secrets.signingKey.key) }}
{{- end }}
{{- range .keys }}
{{- $args = concat $args (list "--public-key" (printf "%s/%s" (include "audit-shipper.publicKeyDir" $) .)) }}
{{- end }}
{{- end }}
{{- end }}
{{- $secrets := list }}
{{- $protocol := get $kafka "security_protocol" | default "PLAINTEXT" }}
{{- if has $protocol (list "SSL" "SASL_SSL") }}
{{- $tls := get $kafka "tls" | default dict }}
{{- with get $tls "ca_file" }}
{{- $args = concat $args (list "--tls-ca-file" .) }}
{{- else }}
{{- $args = append $args "--tls" }}
{{- end }}
{{- $ownClient := $v.kafka.tlsClient }}
{{- if $ownClient.secretName }}
{{- if not (and $ownClient.certKey $ownClient.keyKey) }}
{{- fail "verifier.kafka.tlsClient: certKey and keyKey go together" }}
{{- end }}
{{- $args = concat $args (list "--tls-cert-file" (printf "%s/verifier-kafka-tls/%s" $dir $ownClient.certKey) "--tls-key-file" (printf "%s/verifier-kafka-tls/%s" $dir $ownClient.keyKey)) }}
{{- $secrets = append $secrets (dict "name" "verifier-kafka-tls" "secretName" $ownClient.secretName "items" (list $ownClient.certKey $ownClient.keyKey)) }}
{{- else if get $tls "cert_file" }}
{{- $args = concat $args (list "--tls-cert-file" (get $tls "cert_file") "--tls-key-file" (get $tls "key_file")) }}
{{- end }}
{{- if eq (toString (get $tls "check_hostname")) "false" }}
{{- $args = append $args "--tls-no-hostname-check" }}
{{- end }}
{{- with .Values.secrets.kafkaTls }}
{{- if .secretName }}
{{- $items := list }}
{{- if .caKey }}{{- $items = append $items .caKey }}{{- end }}
{{- if not $ownClient.secretName }}
{{- range list .certKey .keyKey }}{{- if . }}{{- $items = append $items . }}{{- end }}{{- end }}
{{- end }}
{{- if $items }}
{{- $secrets = append $secrets (dict "name" "kafka-tls" "secretName" .secretName "items" $items) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- if has $protocol (list "SASL_SSL" "SASL_PLAINTEXT") }}
{{- $sasl := get $kafka "sasl" | default dict }}
{{- $mechanism := get $sasl "mechanism" | default "SCRAM-SHA-512" }}
{{- $args = concat $args (list "--sasl-mechanism" $mechanism) }}
{{- if eq $mechanism "OAUTHBEARER" }}
{{- $token := dig "oauth" "token_file" "" $sasl }}
{{- if not $token }}
{{- fail "verifier: shipper verify reads an OAUTHBEARER token from a file only; set config.kafka.sasl.oauth.token_file and mount it in the verifier with verifier.extraVolumes and verifier.extraVolumeMounts" }}
{{- end }}
{{- $args = concat $args (list "--sasl-oauth-token-file" $token) }}
{{- else if $v.kafka.sasl.secretName }}
{{- if not $v.kafka.sasl.username }}
{{- fail "verifier.kafka.sasl.secretName needs verifier.kafka.sasl.username" }}
{{- end }}
{{- $args = concat $args (list "--sasl-username" $v.kafka.sasl.username "--sasl-password-file" (printf "%s/verifier-kafka-sasl/%s" $dir $v.kafka.sasl.passwordKey)) }}
{{- $secrets = append $secrets (dict "name" "verifier-kafka-sasl" "secretName" $v.kafka.sasl.secretName "items" (list $v.kafka.sasl.passwordKey)) }}
{{- else }}
{{- if not (and (get $sasl "username") (get $sasl "password_file")) }}
{{- fail "verifier: SASL needs config.kafka.sasl.username and a password (secrets.kafkaSasl), or verifier.kafka.sasl" }}
{{- end }}
{{- $args = concat $args (list "--sasl-username" (get $sasl "username") "--sasl-password-file" (get $sasl "password_file")) }}
{{- with .Values.secrets.kafkaSasl }}
{{- if .secretName }}
{{- $secrets = append $secrets (dict "name" "kafka-sasl" "secretName" .secretName "items" (list .passwordKey)) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- $args = concat $args ($v.extraArgs | default list) }}
{{- toYaml (dict "args" $args "secrets" $secrets) }}
{{- end }}
