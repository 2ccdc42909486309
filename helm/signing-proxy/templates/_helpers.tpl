{{/*
Every helper takes a context dict, (dict "root" $ "values" <signing-proxy values>), so the same
helpers serve this chart's own templates and the sidecar templates rendered inside another
chart (where .Values and .Chart belong to the including chart).
*/}}

{{- define "signing-proxy.name" -}}
{{- default "signing-proxy" .values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Not derived from .Chart.Name: under an alias that name changes, and the sidecar
templates must find the ConfigMap this chart rendered. */}}
{{- define "signing-proxy.fullname" -}}
{{- if .values.fullnameOverride -}}
{{- .values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "signing-proxy.name" . -}}
{{- if contains $name .root.Release.Name -}}
{{- .root.Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .root.Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "signing-proxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "signing-proxy.name" . }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{- define "signing-proxy.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "signing-proxy.selectorLabels" . }}
app.kubernetes.io/version: {{ .values.image.tag | quote }}
app.kubernetes.io/component: signing-proxy
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end -}}

{{- define "signing-proxy.serviceAccountName" -}}
{{- if .values.serviceAccount.create -}}
{{- default (include "signing-proxy.fullname" .) .values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "signing-proxy.image" -}}
{{- if .values.image.digest -}}
{{- printf "%s@%s" .values.image.repository .values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .values.image.repository (toString .values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "signing-proxy.configMapName" -}}
{{- default (include "signing-proxy.fullname" .) .values.existingConfigMap -}}
{{- end -}}

{{- define "signing-proxy.configKey" -}}
{{- if .values.existingConfigMap -}}{{ .values.existingConfigMapKey }}{{- else -}}config.yaml{{- end -}}
{{- end -}}

{{/* The Secret mounted at secretsMountPath, or "" for none. */}}
{{- define "signing-proxy.secretName" -}}
{{- if .values.existingSecret -}}
{{- .values.existingSecret -}}
{{- else if .values.secret.create -}}
{{- printf "%s-credentials" (include "signing-proxy.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Seconds the proxy keeps accepting after SIGTERM: the flag's value, or the program's
default (3) when the chart does not pass --drain-delay. */}}
{{- define "signing-proxy.drainDelay" -}}
{{- if kindIs "invalid" .values.proxy.drainDelaySeconds -}}3{{- else -}}{{ .values.proxy.drainDelaySeconds }}{{- end -}}
{{- end -}}

{{/* The config file rendered from values. A route of a scheme that spools large bodies to
/tmp (spool.schemes) without max_body_bytes gets spool.maxBodyBytes, so /tmp, sized from it,
holds any body the route accepts. */}}
{{- define "signing-proxy.configYaml" -}}
{{- $config := deepCopy (default (dict) .values.config.extraConfig) -}}
{{- $routes := list -}}
{{- range $route := .values.config.routes -}}
{{- $route = deepCopy $route -}}
{{- $scheme := "" -}}
{{- if and (kindIs "map" $route) (kindIs "map" $route.signer) -}}
{{- $scheme = toString (default "" $route.signer.scheme) -}}
{{- end -}}
{{- if and (kindIs "map" $route) (has $scheme $.values.spool.schemes) (not (hasKey $route "max_body_bytes")) -}}
{{- $_ := set $route "max_body_bytes" (int64 $.values.spool.maxBodyBytes) -}}
{{- end -}}
{{- $routes = append $routes $route -}}
{{- end -}}
{{- $_ := set $config "routes" $routes -}}
{{- if .values.interception.enabled -}}
{{- $ca := .values.interception -}}
{{- $dir := trimSuffix "/" $ca.mountPath -}}
{{- $_ := set $config "interception" (dict "ca_cert" (dict "file" (printf "%s/%s" $dir $ca.certKey)) "ca_key" (dict "file" (printf "%s/%s" $dir $ca.keyKey)) "leaf_validity_days" (int $ca.leafValidityDays)) -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}

{{/* A Kubernetes quantity (an integer, or digits with one of the suffixes Ki Mi Gi Ti k M G T)
in bytes. Context: value, what (the key, for the error). */}}
{{- define "signing-proxy.quantityBytes" -}}
{{- $q := .value -}}
{{- if or (kindIs "float64" $q) (kindIs "int" $q) (kindIs "int64" $q) -}}
{{- $q = int64 $q | toString -}}
{{- end -}}
{{- $q = toString $q -}}
{{- if not (regexMatch "^[0-9]+(Ki|Mi|Gi|Ti|k|M|G|T)?$" $q) -}}
{{- fail (printf "%s %q: use a whole number of bytes, or one with a Ki, Mi, Gi, Ti, k, M, G or T suffix" .what $q) -}}
{{- end -}}
{{- $units := dict "" 1 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 -}}
{{- $unit := regexFind "[A-Za-z]+$" $q -}}
{{- mul (trimSuffix $unit $q | int64) (index $units $unit) -}}
{{- end -}}

{{/* The size limit of the /tmp emptyDir, where large bodies are spooled: tmpVolume.sizeLimit,
or room for spool.concurrentBodies bodies of spool.maxBodyBytes plus 16 MiB, in whole MiB. */}}
{{- define "signing-proxy.tmpSizeLimit" -}}
{{- if kindIs "invalid" .values.tmpVolume.sizeLimit -}}
{{- $bytes := add (mul (int64 .values.spool.maxBodyBytes) (int64 .values.spool.concurrentBodies)) 16777216 -}}
{{- printf "%dMi" (div (add $bytes 1048575) 1048576) -}}
{{- else -}}
{{- .values.tmpVolume.sizeLimit -}}
{{- end -}}
{{- end -}}

{{/* Fails the render on settings that cannot work. Renders nothing. */}}
{{- define "signing-proxy.validate" -}}
{{- $v := .values -}}
{{- if not (has $v.mode (list "standalone" "sidecar")) -}}
{{- fail (printf "mode must be standalone or sidecar, not %q" (toString $v.mode)) -}}
{{- end -}}
{{- if and $v.existingSecret $v.secret.create -}}
{{- fail "set existingSecret or secret.create, not both" -}}
{{- end -}}
{{- $mounted := list -}}
{{- range $v.extraSecretMounts -}}
{{- if has .name $mounted -}}
{{- fail (printf "extraSecretMounts: the name %q is used twice" .name) -}}
{{- end -}}
{{- $mounted = append $mounted .name -}}
{{- end -}}
{{- /* The proxy exits within drain delay + shutdown timeout + 1 s of SIGTERM (proxy/signals.py). */ -}}
{{- $drain := addf (include "signing-proxy.drainDelay" .) $v.proxy.shutdownTimeoutSeconds 1 -}}
{{- if ge $drain (float64 $v.terminationGracePeriodSeconds) -}}
{{- fail (printf "proxy.drainDelaySeconds (%s) + proxy.shutdownTimeoutSeconds (%v) + 1 s (the proxy exits within their sum + 1 s) must be below terminationGracePeriodSeconds (%v), or Kubernetes kills the proxy mid-drain" (include "signing-proxy.drainDelay" .) $v.proxy.shutdownTimeoutSeconds $v.terminationGracePeriodSeconds) -}}
{{- end -}}
{{- if not (kindIs "invalid" $v.tmpVolume.sizeLimit) -}}
{{- $limit := include "signing-proxy.quantityBytes" (dict "value" $v.tmpVolume.sizeLimit "what" "tmpVolume.sizeLimit") | int64 -}}
{{- if lt $limit (int64 $v.spool.maxBodyBytes) -}}
{{- fail (printf "tmpVolume.sizeLimit (%v) cannot hold one body of spool.maxBodyBytes (%d bytes), the largest a route accepts and spools to /tmp: raise it, or leave it null to size /tmp from spool.*" $v.tmpVolume.sizeLimit (int64 $v.spool.maxBodyBytes)) -}}
{{- end -}}
{{- end -}}
{{- if not $v.existingConfigMap -}}
{{- if not $v.config.routes -}}
{{- fail "no routes: set config.routes (rendered to a ConfigMap) or existingConfigMap" -}}
{{- end -}}
{{- if hasKey (default (dict) $v.config.extraConfig) "routes" -}}
{{- fail "config.extraConfig must not hold routes: use config.routes" -}}
{{- end -}}
{{- range $i, $route := $v.config.routes -}}
{{- if not (kindIs "map" $route) -}}
{{- fail (printf "config.routes[%d] must be a map" $i) -}}
{{- end -}}
{{- include "signing-proxy.scanSecrets" (dict "node" $route "path" (printf "config.routes[%d]" $i) "values" $v) -}}
{{- $scheme := "" -}}
{{- if kindIs "map" $route.signer -}}{{- $scheme = toString (default "" $route.signer.scheme) -}}{{- end -}}
{{- if and (has $scheme $v.spool.schemes) (hasKey $route "max_body_bytes") -}}
{{- if gt (int64 $route.max_body_bytes) (int64 $v.spool.maxBodyBytes) -}}
{{- fail (printf "config.routes[%d].max_body_bytes (%d) is above spool.maxBodyBytes (%d): the %s scheme spools large bodies to /tmp, which is sized from spool.maxBodyBytes; raise spool.maxBodyBytes to at least %d" $i (int64 $route.max_body_bytes) (int64 $v.spool.maxBodyBytes) $scheme (int64 $route.max_body_bytes)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- include "signing-proxy.scanSecrets" (dict "node" (default (dict) $v.config.extraConfig) "path" "config.extraConfig" "values" $v) -}}
{{- if hasKey (default (dict) $v.config.extraConfig) "interception" -}}
{{- fail "config.extraConfig must not hold interception: use the interception.* values (the chart mounts the CA and writes the section)" -}}
{{- end -}}
{{- range $i, $route := $v.config.routes -}}
{{- if and (eq (toString $route.intercept) "true") (not $v.interception.enabled) -}}
{{- fail (printf "config.routes[%d].intercept needs interception.enabled (with interception.existingSecret holding the CA)" $i) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- include "signing-proxy.validateInterception" . -}}
{{- end -}}

{{/* HTTPS interception: the CA's Secret, and its certificate (public) for the apps. */}}
{{- define "signing-proxy.validateInterception" -}}
{{- $ca := .values.interception -}}
{{- if $ca.enabled -}}
{{- if not $ca.existingSecret -}}
{{- fail "interception.enabled needs interception.existingSecret: the Secret with the CA certificate and key (kubectl create secret tls signing-proxy-ca --cert=ca.crt --key=ca.key)" -}}
{{- end -}}
{{- if not (contains "-----BEGIN CERTIFICATE-----" $ca.caCertificate) -}}
{{- fail "interception.caCertificate must hold the CA certificate (PEM, -----BEGIN CERTIFICATE-----): the chart publishes it for the apps to trust" -}}
{{- end -}}
{{- if contains "PRIVATE KEY" $ca.caCertificate -}}
{{- fail "interception.caCertificate holds a private key: it would be published in a ConfigMap. Give the certificate only; the key belongs in interception.existingSecret" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "signing-proxy.caConfigMapName" -}}
{{- printf "%s-ca" (include "signing-proxy.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Walks a piece of config: fails on {env: ...} anywhere (the value would have to be in the
manifest) and on a literal under a key named in config.secretFields (it would land in the
ConfigMap). Context: node, path, values. */}}
{{- define "signing-proxy.scanSecrets" -}}
{{- $v := .values -}}
{{- $path := .path -}}
{{- if kindIs "map" .node -}}
{{- range $key, $value := .node -}}
{{- $where := printf "%s.%s" $path $key -}}
{{- if and (kindIs "map" $value) (hasKey $value "env") -}}
{{- fail (printf "%s uses {env: ...}; in Kubernetes put the credential in existingSecret and use {file: %s/<key>}" $where $v.secretsMountPath) -}}
{{- else if and (kindIs "string" $value) (has $key $v.config.secretFields) (not $v.config.allowInlineSecrets) -}}
{{- fail (printf "%s is a literal credential, which would land in a ConfigMap; put it in existingSecret and use {file: %s/<key>}" $where $v.secretsMountPath) -}}
{{- else if and (kindIs "string" $value) (hasPrefix (printf "%s/" (trimSuffix "/" $v.secretsMountPath)) $value) -}}
{{- include "signing-proxy.checkSecretFile" (dict "where" $where "file" $value "values" $v) -}}
{{- else if and (kindIs "string" $value) (hasPrefix (printf "%s/" (trimSuffix "/" $v.extraSecretsMountPath)) $value) -}}
{{- include "signing-proxy.checkExtraSecretFile" (dict "where" $where "file" $value "values" $v) -}}
{{- else -}}
{{- include "signing-proxy.scanSecrets" (dict "node" $value "path" $where "values" $v) -}}
{{- end -}}
{{- end -}}
{{- else if kindIs "slice" .node -}}
{{- range $i, $item := .node -}}
{{- include "signing-proxy.scanSecrets" (dict "node" $item "path" (printf "%s[%d]" $path $i) "values" $v) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A config value names a file under secretsMountPath: a Secret must be mounted there, and
with secret.create, hold that key. Context: where, file, values. */}}
{{/* A file under extraSecretsMountPath must be in one of extraSecretMounts. */}}
{{- define "signing-proxy.checkExtraSecretFile" -}}
{{- $v := .values -}}
{{- $name := index (splitList "/" (trimPrefix (printf "%s/" (trimSuffix "/" $v.extraSecretsMountPath)) .file)) 0 -}}
{{- $found := false -}}
{{- range $v.extraSecretMounts -}}
{{- if eq .name $name -}}{{- $found = true -}}{{- end -}}
{{- end -}}
{{- if not $found -}}
{{- fail (printf "%s reads %s, but extraSecretMounts has no entry named %q: add {name: %s, secretName: <the Secret>} (without it the proxy cannot start)" .where .file $name $name) -}}
{{- end -}}
{{- end -}}

{{- define "signing-proxy.checkSecretFile" -}}
{{- $v := .values -}}
{{- $key := index (splitList "/" (trimPrefix (printf "%s/" (trimSuffix "/" $v.secretsMountPath)) .file)) 0 -}}
{{- if not (or $v.existingSecret $v.secret.create) -}}
{{- fail (printf "%s reads %s, but no Secret is mounted at %s: set existingSecret to the Secret that holds the key %q (or secret.create with secret.stringData for a throwaway cluster); without it the proxy cannot start" .where .file $v.secretsMountPath $key) -}}
{{- else if and $v.secret.create (not $v.existingSecret) (not (hasKey (default (dict) $v.secret.stringData) $key)) -}}
{{- fail (printf "%s reads %s, but secret.stringData has no key %q" .where .file $key) -}}
{{- end -}}
{{- end -}}

{{/* Pod annotations that roll pods when rendered config or secret content changes. */}}
{{- define "signing-proxy.checksumAnnotations" -}}
{{- if and (not .values.existingConfigMap) .values.config.rolloutOnChange }}
checksum/config: {{ include "signing-proxy.configYaml" . | sha256sum }}
{{- end }}
{{- if and .values.secret.create (not .values.existingSecret) }}
checksum/secret: {{ toJson .values.secret.stringData | sha256sum }}
{{- end }}
{{- end -}}

{{/* A probe from values, aimed at the admin port unless it names a port itself. */}}
{{- define "signing-proxy.probe" -}}
{{- $probe := deepCopy .probe -}}
{{- if hasKey $probe "httpGet" -}}
{{- $get := $probe.httpGet -}}
{{- if not (hasKey $get "port") -}}
{{- $_ := set $get "port" (int .values.proxy.adminPort) -}}
{{- end -}}
{{- end -}}
{{- toYaml $probe -}}
{{- end -}}

{{/*
The proxy container, shared by the Deployment and the sidecar. Extra context keys:
  listenAddress  the proxy bind address
  native         true: add restartPolicy: Always (a native sidecar under initContainers)
  name           the container name
*/}}
{{- define "signing-proxy.container" -}}
{{- $v := .values -}}
- name: {{ .name }}
  image: {{ include "signing-proxy.image" . | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  {{- if .native }}
  restartPolicy: Always
  {{- end }}
  command:
    - signing-proxy
    - run
    - --config
    - {{ printf "%s/%s" (trimSuffix "/" $v.configMountPath) (include "signing-proxy.configKey" .) | quote }}
  args:
    - --listen
    - {{ printf "%s:%v" .listenAddress $v.proxy.port | quote }}
    - --admin
    - {{ printf "%s:%v" $v.proxy.adminAddress $v.proxy.adminPort | quote }}
    - --log-format
    - {{ $v.proxy.logFormat | quote }}
    - --shutdown-timeout
    - {{ $v.proxy.shutdownTimeoutSeconds | quote }}
    {{- if not (kindIs "invalid" $v.proxy.drainDelaySeconds) }}
    - --drain-delay
    - {{ $v.proxy.drainDelaySeconds | quote }}
    {{- end }}
    {{- range $v.proxy.extraArgs }}
    - {{ . | quote }}
    {{- end }}
  ports:
    - name: sp-proxy
      containerPort: {{ $v.proxy.port }}
      protocol: TCP
    - name: sp-admin
      containerPort: {{ $v.proxy.adminPort }}
      protocol: TCP
  {{- with $v.extraEnv }}
  env:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.startupProbe }}
  startupProbe:
    {{- include "signing-proxy.probe" (dict "probe" . "values" $v) | nindent 4 }}
  {{- end }}
  {{- with $v.livenessProbe }}
  livenessProbe:
    {{- include "signing-proxy.probe" (dict "probe" . "values" $v) | nindent 4 }}
  {{- end }}
  {{- with $v.readinessProbe }}
  readinessProbe:
    {{- include "signing-proxy.probe" (dict "probe" . "values" $v) | nindent 4 }}
  {{- end }}
  {{- with $v.lifecycle }}
  lifecycle:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    - name: signing-proxy-config
      mountPath: {{ $v.configMountPath }}
      readOnly: true
    {{- if include "signing-proxy.secretName" . }}
    - name: signing-proxy-secrets
      mountPath: {{ $v.secretsMountPath }}
      readOnly: true
    {{- end }}
    {{- range $v.extraSecretMounts }}
    - name: signing-proxy-extra-{{ .name }}
      mountPath: {{ trimSuffix "/" $v.extraSecretsMountPath }}/{{ .name }}
      readOnly: true
    {{- end }}
    {{- if $v.interception.enabled }}
    - name: signing-proxy-ca
      mountPath: {{ $v.interception.mountPath }}
      readOnly: true
    {{- end }}
    - name: signing-proxy-tmp
      mountPath: /tmp
    {{- with $v.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{/* The volumes the container mounts: whole directories, never subPath, so kubelet's
atomic updates of ConfigMaps and Secrets reach the proxy, which reloads. */}}
{{- define "signing-proxy.volumes" -}}
- name: signing-proxy-config
  configMap:
    name: {{ include "signing-proxy.configMapName" . }}
    defaultMode: {{ .values.configDefaultMode }}
{{- $secretName := include "signing-proxy.secretName" . }}
{{- if $secretName }}
- name: signing-proxy-secrets
  secret:
    secretName: {{ $secretName }}
    defaultMode: {{ .values.secretDefaultMode }}
{{- end }}
{{- range .values.extraSecretMounts }}
- name: signing-proxy-extra-{{ .name }}
  secret:
    secretName: {{ .secretName }}
    defaultMode: {{ $.values.secretDefaultMode }}
{{- end }}
{{- if .values.interception.enabled }}
- name: signing-proxy-ca
  secret:
    secretName: {{ .values.interception.existingSecret }}
    defaultMode: {{ .values.interception.defaultMode }}
{{- end }}
- name: signing-proxy-tmp
  emptyDir:
    {{- with .values.tmpVolume.medium }}
    medium: {{ . }}
    {{- end }}
    sizeLimit: {{ include "signing-proxy.tmpSizeLimit" . }}
{{- end -}}
