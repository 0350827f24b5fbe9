{{/*
The relay's pod template, shared by the Deployment (one slot) and the StatefulSets of a sharded
release (statefulset.yaml). Called with (dict "ctx" $ "sharded" bool "replica" int): a sharded
pod gets its shard index from its StatefulSet ordinal (env OUTBOXD_SHARD_INDEX, which the config's
postgres.shard.index reads) and the label outboxd/replica (which of the shard's instances it is);
with standbys its readiness probe is /livez.
*/}}
{{- define "outboxd.podTemplate" -}}
{{- $root := .ctx -}}
{{- $sharded := .sharded | default false -}}
{{- $replica := .replica | default 0 -}}
{{- with $root -}}
metadata:
  annotations:
    checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") . | sha256sum }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  labels:
    {{- include "outboxd.labels" . | nindent 4 }}
    {{- if $sharded }}
    outboxd/replica: {{ $replica | quote }}
    {{- end }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "outboxd.serviceAccountName" . }}
  automountServiceAccountToken: {{ .Values.serviceAccount.automountServiceAccountToken }}
  # No OUTBOXD_SERVICE_HOST/OUTBOXD_PORT-style variables from Services in the namespace.
  enableServiceLinks: false
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  containers:
    - name: outboxd
      image: {{ include "outboxd.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args: ["run", "-c", "{{ include "outboxd.configDir" . }}/{{ include "outboxd.configFile" . }}"]
      ports:
        - name: http
          containerPort: {{ .Values.http.port }}
          protocol: TCP
      {{- if or .Values.env .Values.secretEnv $sharded }}
      env:
        {{- if $sharded }}
        # The shard this pod relays: its StatefulSet ordinal (Kubernetes 1.28+ sets the label).
        - name: OUTBOXD_SHARD_INDEX
          valueFrom:
            fieldRef:
              fieldPath: metadata.labels['apps.kubernetes.io/pod-index']
        {{- end }}
        {{- range $name, $key := .Values.secretEnv }}
        - name: {{ $name }}
          valueFrom:
            secretKeyRef:
              name: {{ $root.Values.existingSecret }}
              key: {{ $key }}
        {{- end }}
        {{- with .Values.env }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- end }}
      {{- if or (and .Values.existingSecret .Values.envFromSecret) .Values.envFrom }}
      envFrom:
        {{- if and .Values.existingSecret .Values.envFromSecret }}
        - secretRef:
            name: {{ .Values.existingSecret }}
        {{- end }}
        {{- with .Values.envFrom }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- end }}
      startupProbe:
        httpGet:
          path: /livez
          port: http
        {{- toYaml .Values.probes.startup | nindent 8 }}
      livenessProbe:
        httpGet:
          path: /livez
          port: http
        {{- toYaml .Values.probes.liveness | nindent 8 }}
      readinessProbe:
        httpGet:
          {{- if and $sharded $root.Values.standby.enabled }}
          # A standby never passes /readyz, and a StatefulSet's rolling update waits for each new
          # pod to be ready: with standbys, ready means live (outboxd_leader tells who leads).
          path: /livez
          {{- else }}
          path: /readyz
          {{- end }}
          port: http
        {{- toYaml .Values.probes.readiness | nindent 8 }}
      {{- with .Values.resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: config
          mountPath: {{ include "outboxd.configDir" . }}
          readOnly: true
        - name: tmp
          mountPath: /tmp
        {{- with .Values.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ include "outboxd.fullname" . }}
    - name: tmp
      emptyDir:
        sizeLimit: 64Mi
    {{- with .Values.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if .Values.affinity }}
  affinity:
    {{- toYaml .Values.affinity | nindent 4 }}
  {{- else if and .Values.standby.enabled .Values.standby.spreadAcrossNodes }}
  affinity:
    podAntiAffinity:
      preferredDuringSchedulingIgnoredDuringExecution:
        - weight: 100
          podAffinityTerm:
            topologyKey: kubernetes.io/hostname
            labelSelector:
              matchLabels:
                {{- include "outboxd.selectorLabels" . | nindent 16 }}
  {{- end }}
  {{- with .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
{{- end -}}
