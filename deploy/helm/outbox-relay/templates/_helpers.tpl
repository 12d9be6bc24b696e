{{/*
Written in Go's text/template and its built-in functions only (no Sprig), so
the chart renders the same under Helm and under scripts/helm-check.py, which
renders it in CI with Go's own text/template (see docs/operations.md).
*/}}

{{- define "outbox-relay.fullname" -}}
{{- if .Values.fullnameOverride }}{{ .Values.fullnameOverride }}{{ else }}{{ .Release.Name }}-outbox-relay{{ end -}}
{{- end }}

{{/* Labels as one-line YAML maps, usable at any indentation. */}}
{{- define "outbox-relay.selector" -}}
{app.kubernetes.io/name: outbox-relay, app.kubernetes.io/instance: {{ printf "%q" .Release.Name }}}
{{- end }}

{{- define "outbox-relay.labels" -}}
{app.kubernetes.io/name: outbox-relay, app.kubernetes.io/instance: {{ printf "%q" .Release.Name }}, app.kubernetes.io/version: {{ printf "%q" .Chart.AppVersion }}, app.kubernetes.io/managed-by: {{ .Release.Service }}, helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}}
{{- end }}

{{/* The relay container, at the indentation of a pod spec's containers list. */}}
{{- define "outbox-relay.container" }}
        - name: outbox-relay
          image: {{ printf "%q" (printf "%s:%s" .Values.image.repository .Values.image.tag) }}
          imagePullPolicy: {{ .Values.image.pullPolicy }}
          args: ["run", "--config", "/etc/outbox-relay/outbox-relay.conf"]
          ports:
            - name: http-metrics
              containerPort: {{ .Values.httpPort }}
          # /healthz for readiness too: /readyz is false on the hot standby by design,
          # and a rolling update would wait for ever for a new replica that stands by
          # while the old one holds the slot. Alert on sum(outbox_relay_ready) < 1.
          livenessProbe:
            httpGet: {path: /healthz, port: http-metrics}
            periodSeconds: 10
            failureThreshold: 3
          startupProbe:
            httpGet: {path: /healthz, port: http-metrics}
            periodSeconds: 2
            failureThreshold: 30
          readinessProbe:
            httpGet: {path: /healthz, port: http-metrics}
            periodSeconds: 5
          resources:
            requests:
              {{- range $name, $value := .Values.resources.requests }}
              {{ $name }}: {{ $value }}
              {{- end }}
            limits:
              {{- range $name, $value := .Values.resources.limits }}
              {{ $name }}: {{ $value }}
              {{- end }}
          securityContext:
            runAsNonRoot: true
            readOnlyRootFilesystem: true
            allowPrivilegeEscalation: false
            capabilities: {drop: [ALL]}
          volumeMounts:
            - {name: config, mountPath: /etc/outbox-relay, readOnly: true}
            {{- range $index, $secret := .Values.secretFiles }}
            - {name: secret-{{ $index }}, mountPath: /var/run/secrets/outbox-relay/{{ $index }}, readOnly: true}
            {{- end }}
{{- end }}

{{/* The doctor init container: the same config and secrets, `outbox-relay doctor`. */}}
{{- define "outbox-relay.doctor" }}
        - name: outbox-relay-doctor
          image: {{ printf "%q" (printf "%s:%s" .Values.image.repository .Values.image.tag) }}
          imagePullPolicy: {{ .Values.image.pullPolicy }}
          args: ["doctor", "--config", "/etc/outbox-relay/outbox-relay.conf"]
          securityContext:
            runAsNonRoot: true
            readOnlyRootFilesystem: true
            allowPrivilegeEscalation: false
            capabilities: {drop: [ALL]}
          volumeMounts:
            - {name: config, mountPath: /etc/outbox-relay, readOnly: true}
            {{- range $index, $secret := .Values.secretFiles }}
            - {name: secret-{{ $index }}, mountPath: /var/run/secrets/outbox-relay/{{ $index }}, readOnly: true}
            {{- end }}
{{- end }}

{{/* The pod's volumes: the config file and each secret, readable by the relay only. */}}
{{- define "outbox-relay.volumes" }}
      volumes:
        - name: config
          configMap:
            name: {{ template "outbox-relay.fullname" . }}
        {{- range $index, $secret := .Values.secretFiles }}
        - name: secret-{{ $index }}
          secret:
            secretName: {{ $secret.secretName }}
            defaultMode: 0400
            items:
              - {key: {{ $secret.key }}, path: {{ $secret.key }}}
        {{- end }}
{{- end }}
