{{/*
Sidecar API: named templates your own chart includes in its pod spec. Add this chart as a
dependency (alias signingProxy recommended) with mode: sidecar; it renders the ConfigMap
(and nothing that runs). Then, in your pod template:

  {{- $sp := dict "root" $ "values" .Values.signingProxy }}
  metadata:
    annotations:
      {{- include "signing-proxy.sidecar.annotations" $sp | nindent 8 }}
  spec:
    {{- if .Values.signingProxy.sidecar.native }}
    initContainers:
      {{- include "signing-proxy.sidecar" $sp | nindent 8 }}
    {{- end }}
    containers:
      - name: app
        ...
      {{- if not .Values.signingProxy.sidecar.native }}
      {{- include "signing-proxy.sidecar" $sp | nindent 8 }}
      {{- end }}
    volumes:
      {{- include "signing-proxy.sidecar.volumes" $sp | nindent 8 }}

With interception.enabled, the CA certificate (never the key) is in the ConfigMap named by
  {{ include "signing-proxy.caConfigMapName" $sp }}
(key ca.crt): mount it into your app and trust it; the CA Secret itself goes to the proxy
container only.

The context: "root" is your chart's top-level context ($), "values" this chart's values as
your chart sees them (.Values.signingProxy, or (index .Values "signing-proxy") without an
alias). A complete example: helm/examples/legacy-app.
*/}}

{{- define "signing-proxy.sidecar.checkContext" -}}
{{- if not (and (kindIs "map" .) (hasKey . "root") (hasKey . "values")) -}}
{{- fail "signing-proxy sidecar templates take (dict \"root\" $ \"values\" .Values.signingProxy)" -}}
{{- end -}}
{{- if ne (toString .values.mode) "sidecar" -}}
{{- fail "the signing-proxy sidecar templates need the dependency's values to set mode: sidecar" -}}
{{- end -}}
{{- include "signing-proxy.validate" . -}}
{{- end -}}

{{/* One container list item: under initContainers when sidecar.native, else containers. */}}
{{- define "signing-proxy.sidecar" -}}
{{- include "signing-proxy.sidecar.checkContext" . -}}
{{- $ctx := dict "root" .root "values" .values "name" .values.sidecar.containerName "listenAddress" .values.sidecar.listenAddress "native" .values.sidecar.native -}}
{{- include "signing-proxy.container" $ctx -}}
{{- end -}}

{{/* The volume list items the sidecar mounts (config, secrets, /tmp). */}}
{{- define "signing-proxy.sidecar.volumes" -}}
{{- include "signing-proxy.sidecar.checkContext" . -}}
{{- include "signing-proxy.volumes" . -}}
{{- end -}}

{{/* Pod annotations (checksum/config, checksum/secret); may render nothing, so put it
under an annotations map that also holds your own keys, or guard it with `with`. */}}
{{- define "signing-proxy.sidecar.annotations" -}}
{{- include "signing-proxy.sidecar.checkContext" . -}}
{{- include "signing-proxy.checksumAnnotations" . | trim -}}
{{- end -}}
