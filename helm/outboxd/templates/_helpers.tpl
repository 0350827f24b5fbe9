{{/* Chart name, truncated to the 63 characters a DNS label allows. */}}
{{- define "outboxd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: the release name, plus the chart name unless the release name contains it. */}}
{{- define "outboxd.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "outboxd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "outboxd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "outboxd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "outboxd.labels" -}}
helm.sh/chart: {{ include "outboxd.chart" . }}
{{ include "outboxd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/component: relay
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "outboxd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "outboxd.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "outboxd.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* One leader holds the slot; standby adds hot standbys. */}}
{{- define "outboxd.replicas" -}}
{{- if .Values.standby.enabled -}}
{{- .Values.standby.replicas | int -}}
{{- else -}}
1
{{- end -}}
{{- end -}}

{{/* Where the config file is mounted; the container's `-c` argument. */}}
{{- define "outboxd.configDir" -}}/etc/outboxd{{- end -}}
{{- define "outboxd.configFile" -}}outboxd.yaml{{- end -}}

{{/*
Shard i of a sharded release reads i from its pod's StatefulSet ordinal: the env variable the pod
template (_pod.tpl) sets from the pod-index label, expanded by outboxd at start ("2" is taken as
the integer 2). An empty value (no such label: Kubernetes before 1.28) stops outboxd with this.
*/}}
{{- define "outboxd.shardIndexRef" -}}
${OUTBOXD_SHARD_INDEX:?the pod-index label, Kubernetes 1.28+}
{{- end -}}

{{/*
The outboxd config file: values.config with http.port taken from values.http.port, so that the
container port, the probes and the Service always agree with what outboxd listens on; with
shards > 1, postgres.shard too (index from the pod, count = shards).
*/}}
{{- define "outboxd.config" -}}
{{- $cfg := deepCopy (.Values.config | default dict) -}}
{{- $http := deepCopy (get $cfg "http" | default dict) -}}
{{- if and (hasKey $http "port") (ne (toString (get $http "port")) (toString .Values.http.port)) -}}
{{- fail (printf "config.http.port (%v) differs from http.port (%v): set only http.port, which the container port, probes and Service use too" (get $http "port") .Values.http.port) -}}
{{- end -}}
{{- if has (toString (get $http "host")) (list "127.0.0.1" "localhost" "::1") -}}
{{- fail (printf "config.http.host %v is a loopback address: the kubelet's probes and Prometheus could not reach outboxd; leave it unset (0.0.0.0)" (get $http "host")) -}}
{{- end -}}
{{- $_ := set $http "port" (.Values.http.port | int) -}}
{{- $_ := set $cfg "http" $http -}}
{{- if gt (int .Values.shards) 1 -}}
{{- $pg := deepCopy (get $cfg "postgres" | default dict) -}}
{{- if hasKey $pg "shard" -}}
{{- fail (printf "config.postgres.shard is set, and shards is %v: with shards > 1 the chart sets postgres.shard for each pod; remove config.postgres.shard" .Values.shards) -}}
{{- end -}}
{{- $_ := set $pg "shard" (dict "index" (include "outboxd.shardIndexRef" .) "count" (int .Values.shards)) -}}
{{- $_ := set $cfg "postgres" $pg -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/*
config.shutdown.grace in seconds (outboxd's default 30s when unset); -1 when it is not a literal
duration (e.g. a ${VAR}), which skips the check against terminationGracePeriodSeconds.
*/}}
{{- define "outboxd.graceSeconds" -}}
{{- $grace := "30s" -}}
{{- $shutdown := get (.Values.config | default dict) "shutdown" | default dict -}}
{{- if hasKey $shutdown "grace" -}}
{{- $grace = toString (get $shutdown "grace") -}}
{{- end -}}
{{- if regexMatch "^[0-9]+(\\.[0-9]+)?(ms|s|m|h)$" $grace -}}
{{- $n := regexFind "^[0-9]+(\\.[0-9]+)?" $grace | float64 -}}
{{- $unit := regexReplaceAll "^[0-9]+(\\.[0-9]+)?" $grace "" -}}
{{- mulf $n (get (dict "ms" 0.001 "s" 1.0 "m" 60.0 "h" 3600.0) $unit) -}}
{{- else if eq $grace "0" -}}
0
{{- else -}}
-1
{{- end -}}
{{- end -}}

{{/* Values that would break the pods at runtime; rendering fails with what to change. */}}
{{- define "outboxd.checks" -}}
{{- $grace := include "outboxd.graceSeconds" . | float64 -}}
{{- if and (ge $grace 0.0) (lt (.Values.terminationGracePeriodSeconds | float64) (addf $grace 5.0)) -}}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be at least config.shutdown.grace (%vs) + 5s, or Kubernetes kills outboxd while it drains" .Values.terminationGracePeriodSeconds $grace) -}}
{{- end -}}
{{- if and .Values.secretEnv (not .Values.existingSecret) -}}
{{- fail "secretEnv picks keys of existingSecret: set existingSecret too" -}}
{{- end -}}
{{- end -}}

{{/*
Sharded releases (shards > 1). The relays are StatefulSets: one per instance of a shard (the
first, then one per standby), each with `shards` pods whose ordinal is the shard index. Names are
cut so that pod names and the StatefulSet's controller-revision-hash label fit in 63 characters.
*/}}
{{- define "outboxd.sharded" -}}
{{- if gt (int .Values.shards) 1 -}}true{{- end -}}
{{- end -}}

{{- define "outboxd.shardBase" -}}
{{- include "outboxd.fullname" . | trunc 42 | trimSuffix "-" -}}
{{- end -}}

{{/* The StatefulSet of replica k (0: the first instance of each shard; 1…: its standbys). Called with (list $ k). */}}
{{- define "outboxd.setName" -}}
{{- $root := index . 0 -}}
{{- $k := index . 1 | int -}}
{{- if eq $k 0 -}}
{{- include "outboxd.shardBase" $root -}}
{{- else if eq $k 1 -}}
{{- printf "%s-standby" (include "outboxd.shardBase" $root) -}}
{{- else -}}
{{- printf "%s-standby-%d" (include "outboxd.shardBase" $root) $k -}}
{{- end -}}
{{- end -}}

{{/* The Service (and so the Prometheus job) of shard i. Called with (list $ i). */}}
{{- define "outboxd.shardServiceName" -}}
{{- printf "%s-shard-%d" (include "outboxd.shardBase" (index . 0)) (index . 1 | int) -}}
{{- end -}}
