{{/* Chart name. */}}
{{- define "satsuma.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource name prefix: the release name, plus the chart name unless already in it. */}}
{{- define "satsuma.fullname" -}}
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

{{/* Labels on every resource. */}}
{{- define "satsuma.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "satsuma.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels shared by all components; add app.kubernetes.io/component. */}}
{{- define "satsuma.selectorLabels" -}}
app.kubernetes.io/name: {{ include "satsuma.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The image reference. */}}
{{- define "satsuma.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* Name of the Secret with app-secret and token-secret. */}}
{{- define "satsuma.secretName" -}}
{{- if .Values.secrets.existingSecret }}
{{- .Values.secrets.existingSecret }}
{{- else }}
{{- include "satsuma.fullname" . }}
{{- end }}
{{- end }}

{{/* Name of the Secret with turn-secret (coturn's static-auth-secret). */}}
{{- define "satsuma.turnSecretName" -}}
{{- if .Values.turn.existingSecret }}
{{- .Values.turn.existingSecret }}
{{- else }}
{{- include "satsuma.fullname" . }}-turn
{{- end }}
{{- end }}

{{/* The STUN/TURN URLs participants get, as a TOML array. */}}
{{- define "satsuma.turnUrls" -}}
{{- $h := .Values.turn.host -}}
{{- $p := .Values.turn.port -}}
["stun:{{ $h }}:{{ $p }}", "turn:{{ $h }}:{{ $p }}?transport=udp", "turn:{{ $h }}:{{ $p }}?transport=tcp"
{{- if .Values.turn.tlsSecretName }}, "turns:{{ $h }}:{{ .Values.turn.tlsPort }}?transport=tcp"{{ end }}]
{{- end }}

{{/* Non-empty when rooms live in etcd (external endpoints or the chart's own etcd). */}}
{{- define "satsuma.etcdEnabled" -}}
{{- if or .Values.store.etcd.endpoints .Values.store.etcd.deploy.enabled }}true{{ end }}
{{- end }}

{{/* Name of the chart's etcd StatefulSet and its headless Service. */}}
{{- define "satsuma.etcdName" -}}
{{ include "satsuma.fullname" . }}-etcd
{{- end }}

{{/* The etcd client URLs the coordinator uses, as a JSON (and TOML) array of strings: every
member of the chart's etcd, or store.etcd.endpoints. */}}
{{- define "satsuma.etcdEndpoints" -}}
{{- if .Values.store.etcd.deploy.enabled }}
{{- $name := include "satsuma.etcdName" . }}
{{- $urls := list }}
{{- range $i := until (int .Values.store.etcd.deploy.replicas) }}
{{- $urls = append $urls (printf "http://%s-%d.%s.%s.svc.cluster.local:%d" $name $i $name $.Release.Namespace (int $.Values.store.etcd.deploy.clientPort)) }}
{{- end }}
{{- toJson $urls }}
{{- else }}
{{- toJson .Values.store.etcd.endpoints }}
{{- end }}
{{- end }}

{{/* The relay peers of every SFU pod, SATSUMA_SFU_RELAY_PEERS: NODE=HOST:PORT for every replica,
the pod's name under the headless Service. */}}
{{- define "satsuma.sfuRelayPeers" -}}
{{- $name := printf "%s-sfu" (include "satsuma.fullname" .) }}
{{- $peers := list }}
{{- range $i := until (int .Values.sfu.replicas) }}
{{- $peers = append $peers (printf "%s-%d=%s-%d.%s.%s.svc.cluster.local:%d" $name $i $name $i $name $.Release.Namespace (int $.Values.sfu.relay.port)) }}
{{- end }}
{{- join "," $peers }}
{{- end }}

{{/* The URL users open (coordinator.publicUrl, or https://<ingress host>/). */}}
{{- define "satsuma.publicUrl" -}}
{{- .Values.coordinator.publicUrl | default (printf "https://%s/" .Values.coordinator.ingress.host) }}
{{- end }}
