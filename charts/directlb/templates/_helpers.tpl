{{/* Name of the chart, for labels. */}}
{{- define "directlb.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Prefix of every object's name: the release name, plus "-directlb" unless it already says so. */}}
{{- define "directlb.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "directlb.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "directlb.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: directlb
{{- end -}}

{{- define "directlb.controller.selectorLabels" -}}
app.kubernetes.io/name: {{ include "directlb.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: lb-controller
{{- end -}}

{{- define "directlb.nodeAgent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "directlb.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: node-agent
{{- end -}}

{{- define "directlb.controller.fullname" -}}
{{- printf "%s-controller" (include "directlb.fullname" .) -}}
{{- end -}}

{{- define "directlb.nodeAgent.fullname" -}}
{{- printf "%s-node-agent" (include "directlb.fullname" .) -}}
{{- end -}}

{{- define "directlb.controller.serviceAccountName" -}}
{{- if .Values.controller.serviceAccount.create -}}
{{- default (include "directlb.controller.fullname" .) .Values.controller.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.controller.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "directlb.nodeAgent.serviceAccountName" -}}
{{- if .Values.nodeAgent.serviceAccount.create -}}
{{- default (include "directlb.nodeAgent.fullname" .) .Values.nodeAgent.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.nodeAgent.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "directlb.controller.image" -}}
{{- printf "%s:%s" .Values.controller.image.repository (default .Chart.AppVersion .Values.controller.image.tag) -}}
{{- end -}}

{{- define "directlb.nodeAgent.image" -}}
{{- printf "%s:%s" .Values.nodeAgent.image.repository (default .Chart.AppVersion .Values.nodeAgent.image.tag) -}}
{{- end -}}

{{/* Webhook objects: Service, configuration, certificate Secret. */}}
{{- define "directlb.webhook.serviceName" -}}
{{- printf "%s-webhook" (include "directlb.fullname" .) -}}
{{- end -}}

{{- define "directlb.webhook.configName" -}}
{{- printf "%s-pods" (include "directlb.fullname" .) -}}
{{- end -}}

{{- define "directlb.webhook.secretName" -}}
{{- printf "%s-webhook-tls" (include "directlb.fullname" .) -}}
{{- end -}}

{{/* The Service in front of the controllers' drain endpoint. */}}
{{- define "directlb.drain.serviceName" -}}
{{- printf "%s-drain" (include "directlb.fullname" .) -}}
{{- end -}}

{{/* The drain Service is rendered: the webhook injects hooks, the
endpoint is on, and no drainHost replaces it. */}}
{{- define "directlb.drain.service" -}}
{{- $c := .Values.controller -}}
{{- if and $c.readinessGates .Values.webhook.enabled (ne $c.drainBindAddress "0") (not $c.drainHost) -}}true{{- end -}}
{{- end -}}

{{/* The port of a bind address such as ":8080" or "0.0.0.0:8080". */}}
{{- define "directlb.port" -}}
{{- $p := splitList ":" . | last -}}
{{- if not (regexMatch "^[0-9]+$" $p) -}}
{{- fail (printf "bind address %q: want host:port with a numeric port" .) -}}
{{- end -}}
{{- $p -}}
{{- end -}}

{{/* Namespaces the webhook never sees: the release's own first, then webhook.excludeNamespaces. */}}
{{- define "directlb.webhook.excludeNamespaces" -}}
{{- $out := list .Release.Namespace -}}
{{- range .Values.webhook.excludeNamespaces -}}
{{- if not (has . $out) -}}{{- $out = append $out . -}}{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* The host directory to mount for a host path that may hold $(NODE_NAME)
(expanded by the kubelet in args, not in volumes): the part before the
segment with $(NODE_NAME), or the path itself. */}}
{{- define "directlb.nodeDir" -}}
{{- $p := regexReplaceAll "/[^/]*\\$\\(NODE_NAME\\).*$" . "" -}}
{{- default "/" $p -}}
{{- end -}}

{{/* Whole seconds (rounded up) in a Go duration such as "25s", "1m30s"
or "1500ms", as values.schema.json admits them. */}}
{{- define "directlb.seconds" -}}
{{- $total := 0.0 -}}
{{- $unit := dict "ns" 0.000000001 "us" 0.000001 "µs" 0.000001 "ms" 0.001 "s" 1.0 "m" 60.0 "h" 3600.0 -}}
{{- range regexFindAll "[0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h)" (toString .) -1 -}}
{{- $u := regexFind "(ns|us|µs|ms|s|m|h)$" . -}}
{{- $total = addf $total (mulf (trimSuffix $u . | float64) (get $unit $u)) -}}
{{- end -}}
{{- ceil $total | int -}}
{{- end -}}

{{/* The controller's shutdown fits its grace period: the drain endpoint
answers for drainShutdownDelay, then the manager has up to 10s to stop,
30s at the least (GracefulShutdownTimeout in pkg/controller/manager.go); a
grace period shorter than that kills a stopping replica in the middle of
drain waits. */}}
{{- define "directlb.controller.checkGrace" -}}
{{- $c := .Values.controller -}}
{{- $need := max 30 (add (include "directlb.seconds" $c.drainShutdownDelay | int) 10) -}}
{{- if lt (int $c.terminationGracePeriodSeconds) (int $need) -}}
{{- fail (printf "controller.terminationGracePeriodSeconds %v: want at least %d (controller.drainShutdownDelay %s + 10s for the controller to stop, 30s at the least)" $c.terminationGracePeriodSeconds $need $c.drainShutdownDelay) -}}
{{- end -}}
{{- end -}}
