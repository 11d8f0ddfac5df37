{{/*
Names, labels, the rendered config.toml, required-value checks, and the two public named
templates for users' own pod specs (embedded mode):
  audrey-federation.sidecarContainer  - the sidecar container (a list item)
  audrey-federation.sidecarVolumes    - the volumes it mounts (list items)
Both take the chart's scope: from a parent chart, `(index .Subcharts "audrey-federation")`.
*/}}

{{- define "audrey-federation.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "audrey-federation.fullname" -}}
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

{{- define "audrey-federation.selectorLabels" -}}
app.kubernetes.io/name: {{ include "audrey-federation.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "audrey-federation.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "audrey-federation.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
audrey-federation/site: {{ .Values.site | quote }}
{{- end }}

{{- define "audrey-federation.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "audrey-federation.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "audrey-federation.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Fails with a message naming the value when a combination is impossible. */}}
{{- define "audrey-federation.validate" -}}
{{- $_ := required "site is required: this site's id, unique in the federation (--set site=...)" .Values.site }}
{{- if ge (float64 .Values.shutdown.drainTimeout) (float64 .Values.terminationGracePeriodSeconds) }}
{{- fail (printf "shutdown.drainTimeout (%v) must be below terminationGracePeriodSeconds (%v): Kubernetes would SIGKILL the sidecar mid-drain" .Values.shutdown.drainTimeout .Values.terminationGracePeriodSeconds) }}
{{- end }}
{{- if eq .Values.mode "full" }}
{{- $_ := required "server.image.repository is required in full mode: the Config Server image" .Values.server.image.repository }}
{{- end }}
{{- if and (eq .Values.mode "sidecar") (not .Values.proxy.upstream) }}
{{- $_ := required "upstreamService.name is required in sidecar mode: the existing Config Server Service to front" .Values.upstreamService.name }}
{{- end }}
{{- if .Values.proxy.tls.enabled }}
{{- $_ := required "proxy.tls.existingSecret is required when proxy.tls.enabled: the listener certificate Secret" .Values.proxy.tls.existingSecret }}
{{- end }}
{{- if .Values.amqp.enabled }}
{{- $_ := required "amqp.url is required when amqp.enabled" .Values.amqp.url }}
{{- $_ := required "oauth.conductorKey is required when amqp.enabled: replays are signed as Conductor" .Values.oauth.conductorKey }}
{{- $_ := required "oauth.existingSecret is required when amqp.enabled: the Secret holding Conductor's consumer secret" .Values.oauth.existingSecret }}
{{- if or (hasPrefix "amqps://" .Values.amqp.url) (eq .Values.amqp.sasl "external") }}
{{- $_ := required "amqp.tls.existingSecret is required with amqps:// or sasl external: the Secret with the broker CA and this site's client certificate and key" .Values.amqp.tls.existingSecret }}
{{- end }}
{{- if eq .Values.amqp.sasl "plain" }}
{{- $_ := required "amqp.plain.username is required with sasl plain" .Values.amqp.plain.username }}
{{- $_ := required "amqp.plain.existingSecret is required with sasl plain: the Secret holding the password" .Values.amqp.plain.existingSecret }}
{{- end }}
{{- if .Values.networkPolicy.enabled }}
{{- if not .Values.networkPolicy.broker.peers }}
{{- fail "networkPolicy.broker.peers is required when networkPolicy.enabled and amqp.enabled: otherwise the broker is unreachable" }}
{{- end }}
{{- end }}
{{- end }}
{{- if and .Values.amqp.tls.certManager.enabled (not .Values.amqp.tls.certManager.issuerRef.name) }}
{{- fail "amqp.tls.certManager.issuerRef.name is required when amqp.tls.certManager.enabled" }}
{{- end }}
{{- end }}

{{- define "audrey-federation.upstream" -}}
{{- if .Values.proxy.upstream }}
{{- .Values.proxy.upstream }}
{{- else if ne .Values.mode "sidecar" }}
{{- /* full and embedded: the server is in the same pod, on loopback. */}}
{{- printf "http://127.0.0.1:%v" (int64 .Values.server.port) }}
{{- else }}
{{- $ns := default .Release.Namespace .Values.upstreamService.namespace }}
{{- printf "http://%s.%s.svc:%v" .Values.upstreamService.name $ns (int64 .Values.upstreamService.port) }}
{{- end }}
{{- end }}

{{/* Paths inside the sidecar container. */}}
{{- define "audrey-federation.configDir" -}}/etc/audrey-federation{{- end }}
{{- define "audrey-federation.secretsDir" -}}/etc/audrey-federation/secrets{{- end }}

{{/* config.toml, rendered from values into the schema of src/config.rs (unknown keys are rejected there). */}}
{{- define "audrey-federation.configToml" -}}
{{- $s := include "audrey-federation.secretsDir" . -}}
site = {{ .Values.site | toJson }}

[proxy]
listen = {{ printf "0.0.0.0:%v" .Values.proxy.port | toJson }}
upstream = {{ include "audrey-federation.upstream" . | toJson }}
upstream_timeout = {{ .Values.proxy.upstreamTimeout }}
upstream_idle_timeout = {{ .Values.proxy.upstreamIdleTimeout }}
capture_body_limit = {{ int64 .Values.proxy.captureBodyLimit }}
{{- with .Values.proxy.trustedProxies }}
trusted_proxies = {{ toJson . }}
{{- end }}
{{- if .Values.proxy.tls.enabled }}
tls_cert = {{ printf "%s/listener/tls.crt" $s | toJson }}
tls_key = {{ printf "%s/listener/tls.key" $s | toJson }}
{{- end }}
{{- if eq .Values.mode "full" }}
upstream_storage_dir = {{ .Values.server.storage.mountPath | toJson }}
{{- end }}

[admin]
listen = {{ printf "0.0.0.0:%v" .Values.admin.port | toJson }}

[state]
dir = {{ .Values.state.mountPath | toJson }}
{{- if .Values.amqp.enabled }}

[amqp]
url = {{ .Values.amqp.url | toJson }}
sasl = {{ .Values.amqp.sasl | toJson }}
{{- if .Values.amqp.tls.existingSecret }}
ca = {{ printf "%s/broker/ca.crt" $s | toJson }}
cert = {{ printf "%s/broker/tls.crt" $s | toJson }}
key = {{ printf "%s/broker/tls.key" $s | toJson }}
{{- end }}
{{- if eq .Values.amqp.sasl "plain" }}
username = {{ .Values.amqp.plain.username | toJson }}
password_file = {{ printf "%s/broker-password/password" $s | toJson }}
{{- end }}
allow_insecure = {{ .Values.amqp.allowInsecure }}
publish_address = {{ .Values.amqp.publishAddress | toJson }}
routing_key_template = {{ .Values.amqp.routingKeyTemplate | toJson }}
{{- with .Values.amqp.subscribeAddress }}
subscribe_address = {{ toJson . }}
{{- end }}
subscribe_mode = {{ .Values.amqp.subscribeMode | toJson }}
reconnect_initial = {{ .Values.amqp.reconnectInitial }}
reconnect_max = {{ .Values.amqp.reconnectMax }}
heartbeat_interval = {{ .Values.amqp.heartbeatInterval }}

[oauth]
conductor_key = {{ .Values.oauth.conductorKey | toJson }}
conductor_secret_file = {{ printf "%s/oauth/conductor_secret" $s | toJson }}
{{- end }}

[replay]
park_ttl = {{ .Values.replay.parkTtl }}
retry_max = {{ .Values.replay.retryMax }}

[shutdown]
drain_timeout = {{ .Values.shutdown.drainTimeout }}
{{ end }}

{{- define "audrey-federation.probes" -}}
startupProbe:
  httpGet:
    path: /healthz
    port: admin
  periodSeconds: {{ .Values.probes.startup.periodSeconds }}
  failureThreshold: {{ .Values.probes.startup.failureThreshold }}
readinessProbe:
  httpGet:
    path: /readyz
    port: admin
  periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
  timeoutSeconds: {{ .Values.probes.readiness.timeoutSeconds }}
  failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
livenessProbe:
  httpGet:
    path: /healthz
    port: admin
  periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
  timeoutSeconds: {{ .Values.probes.liveness.timeoutSeconds }}
  failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
{{- end }}

{{/*
The sidecar container, as one list item. Public: include it in your own pod spec's
`containers:` (or `initContainers:` with `restartPolicy: Always` added) in embedded mode.
*/}}
{{- define "audrey-federation.sidecarContainer" -}}
{{- $s := include "audrey-federation.secretsDir" . -}}
- name: audrey-federation
  image: {{ include "audrey-federation.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args:
    - run
    - --config
    - {{ printf "%s/config.toml" (include "audrey-federation.configDir" .) }}
    - --log-format
    - {{ .Values.logFormat }}
  ports:
    - name: proxy
      containerPort: {{ .Values.proxy.port }}
      protocol: TCP
    - name: admin
      containerPort: {{ .Values.admin.port }}
      protocol: TCP
  {{- include "audrey-federation.probes" . | nindent 2 }}
  resources:
    {{- toYaml .Values.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: audrey-federation-config
      mountPath: {{ include "audrey-federation.configDir" . }}/config.toml
      subPath: config.toml
      readOnly: true
    - name: audrey-federation-state
      mountPath: {{ .Values.state.mountPath }}
    {{- if .Values.proxy.tls.enabled }}
    - name: audrey-federation-listener-tls
      mountPath: {{ $s }}/listener
      readOnly: true
    {{- end }}
    {{- if .Values.amqp.enabled }}
    {{- if .Values.amqp.tls.existingSecret }}
    - name: audrey-federation-broker-tls
      mountPath: {{ $s }}/broker
      readOnly: true
    {{- end }}
    {{- if eq .Values.amqp.sasl "plain" }}
    - name: audrey-federation-broker-password
      mountPath: {{ $s }}/broker-password
      readOnly: true
    {{- end }}
    - name: audrey-federation-oauth
      mountPath: {{ $s }}/oauth
      readOnly: true
    {{- end }}
    {{- if eq .Values.mode "full" }}
    - name: server-storage
      mountPath: {{ .Values.server.storage.mountPath }}
      readOnly: true
    {{- end }}
{{- end }}

{{/*
The volumes the sidecar container mounts, as list items. Public (embedded mode): the state
volume `audrey-federation-state` is included only when state.persistence.existingClaim is set
or persistence is off; otherwise give your pod a volume (or volumeClaimTemplate) of that name.
*/}}
{{- define "audrey-federation.sidecarVolumes" -}}
- name: audrey-federation-config
  configMap:
    name: {{ include "audrey-federation.fullname" . }}
{{- if .Values.proxy.tls.enabled }}
- name: audrey-federation-listener-tls
  secret:
    secretName: {{ .Values.proxy.tls.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ .Values.proxy.tls.certKey }}
        path: tls.crt
      - key: {{ .Values.proxy.tls.keyKey }}
        path: tls.key
{{- end }}
{{- if .Values.amqp.enabled }}
{{- if .Values.amqp.tls.existingSecret }}
- name: audrey-federation-broker-tls
  secret:
    secretName: {{ .Values.amqp.tls.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ .Values.amqp.tls.caKey }}
        path: ca.crt
      - key: {{ .Values.amqp.tls.certKey }}
        path: tls.crt
      - key: {{ .Values.amqp.tls.keyKey }}
        path: tls.key
{{- end }}
{{- if eq .Values.amqp.sasl "plain" }}
- name: audrey-federation-broker-password
  secret:
    secretName: {{ .Values.amqp.plain.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ .Values.amqp.plain.passwordKey }}
        path: password
{{- end }}
- name: audrey-federation-oauth
  secret:
    secretName: {{ .Values.oauth.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ .Values.oauth.secretKey }}
        path: conductor_secret
{{- end }}
{{- if not .Values.state.persistence.enabled }}
- name: audrey-federation-state
  emptyDir: {}
{{- else if .Values.state.persistence.existingClaim }}
- name: audrey-federation-state
  persistentVolumeClaim:
    claimName: {{ .Values.state.persistence.existingClaim }}
{{- else if eq .Values.mode "sidecar" }}
- name: audrey-federation-state
  persistentVolumeClaim:
    claimName: {{ include "audrey-federation.fullname" . }}-state
{{- end }}
{{- end }}

{{- define "audrey-federation.configChecksum" -}}
{{- include "audrey-federation.configToml" . | sha256sum }}
{{- end }}

{{- define "audrey-federation.podMeta" -}}
metadata:
  labels:
    {{- include "audrey-federation.labels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    checksum/config: {{ include "audrey-federation.configChecksum" . }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{- define "audrey-federation.podCommon" -}}
serviceAccountName: {{ include "audrey-federation.serviceAccountName" . }}
automountServiceAccountToken: false
terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
