{{/* Names and labels shared by every template. */}}

{{- define "mailwarden.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mailwarden.fullname" -}}
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

{{- define "mailwarden.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mailwarden.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mailwarden.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "mailwarden.labels" -}}
helm.sh/chart: {{ include "mailwarden.chart" . }}
app.kubernetes.io/name: {{ include "mailwarden.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mailwarden
{{- end -}}

{{- define "mailwarden.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "mailwarden.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository[:tag][@digest]; the digest pins, the tag documents. */}}
{{- define "mailwarden.imageRef" -}}
{{- $img := index . 0 -}}
{{- $appVersion := index . 1 -}}
{{- $ref := printf "%s:%s" $img.repository (default $appVersion $img.tag) -}}
{{- if $img.digest -}}
{{- $ref = printf "%s@%s" $ref $img.digest -}}
{{- end -}}
{{- $ref -}}
{{- end -}}

{{- define "mailwarden.image" -}}
{{- include "mailwarden.imageRef" (list .Values.image .Chart.AppVersion) -}}
{{- end -}}

{{/* The listener image: its own repository if set, otherwise the operator's image. */}}
{{- define "mailwarden.listenerImage" -}}
{{- if .Values.listener.image.repository -}}
{{- include "mailwarden.imageRef" (list .Values.listener.image .Chart.AppVersion) -}}
{{- else -}}
{{- include "mailwarden.image" . -}}
{{- end -}}
{{- end -}}

{{/* Labels the operator puts on every listener pod (operator/mailwarden/operator/naming.py):
     the PodMonitor selects them. */}}
{{- define "mailwarden.listenerPodLabels" -}}
app.kubernetes.io/name: mailwarden-listener
app.kubernetes.io/component: listener
app.kubernetes.io/managed-by: mailwarden-operator
{{- end -}}

{{/* What the operator hands every listener Deployment and Service it creates, as JSON in
     MAILWARDEN_LISTENER_DEFAULTS. */}}
{{- define "mailwarden.listenerDefaults" -}}
{{- $d := .Values.listener.defaults -}}
{{- $labels := $d.podLabels -}}
{{- $out := dict
      "resources" $d.resources
      "nodeSelector" $d.nodeSelector
      "tolerations" $d.tolerations
      "affinity" $d.affinity
      "priorityClassName" $d.priorityClassName
      "podAnnotations" $d.podAnnotations
      "podLabels" $labels
      "expose" $d.expose
      "imagePullPolicy" (default .Values.image.pullPolicy .Values.listener.image.pullPolicy)
      "imagePullSecrets" .Values.imagePullSecrets
-}}
{{- toJson $out -}}
{{- end -}}

{{/*
  What the operator does in the namespaces it watches: exactly the requests it makes, no more
  (tests/operator/test_rbac.py runs the operator and compares). kopf lists and watches the
  resources it handles; the operator reads its MailServices (never writes them: no patch),
  writes both statuses, and creates, reads, corrects (patch) and deletes the children. No update or delete of anything else, no wildcards.
*/}}
{{- define "mailwarden.namespacedRules" -}}
- apiGroups: [mailwarden.io]
  resources: [mailservices]
  verbs: [get, list, watch]
- apiGroups: [mailwarden.io]
  resources: [ipaddressgroups]
  verbs: [list, watch]
- apiGroups: [mailwarden.io]
  resources: [mailservices/status, ipaddressgroups/status]
  verbs: [patch]
# The children's ownerReferences set blockOwnerDeletion, which the API server's
# OwnerReferencesPermissionEnforcement admission allows only with update on the owner's
# finalizers.
- apiGroups: [mailwarden.io]
  resources: [mailservices/finalizers]
  verbs: [update]
# A listener's children (one listener per fixed address, shared by the MailServices on it,
# and one per MailService for its other ports) are deleted when no MailService maps to the
# listener any more (its last member moved to another address).
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, patch, delete]
# Listeners with more than one replica: at most one pod evicted at a time.
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, delete]
# Listener pods (by label, server-side): why their containers wait (CrashLoopBackOff,
# ImagePullBackOff) reaches the MailService's status, and where to read live figures. Never
# patched: pods follow their ConfigMap through the API (below), not by a nudge.
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
# Each listener's pods run as a ServiceAccount of their own that may read only their own
# ConfigMap (a Role with resourceNames). Creating that Role needs no escalation: the operator
# holds configmaps get/list/watch itself.
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [get, create, patch, delete]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, create, patch, delete]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}

{{/*
  What the operator creates, changes and deletes besides its own custom resources and Events:
  the kinds the admission policy (rbac.admissionPolicy) limits to objects it manages. A test
  holds this list to the write verbs of mailwarden.namespacedRules.
*/}}
{{- define "mailwarden.managedResources" -}}
- apiGroups: [""]
  apiVersions: ["*"]
  resources: [configmaps, services, serviceaccounts]
  operations: [CREATE, UPDATE, DELETE]
- apiGroups: [apps]
  apiVersions: ["*"]
  resources: [deployments]
  operations: [CREATE, UPDATE, DELETE]
- apiGroups: [networking.k8s.io]
  apiVersions: ["*"]
  resources: [networkpolicies]
  operations: [CREATE, UPDATE, DELETE]
- apiGroups: [policy]
  apiVersions: ["*"]
  resources: [poddisruptionbudgets]
  operations: [CREATE, UPDATE, DELETE]
- apiGroups: [rbac.authorization.k8s.io]
  apiVersions: ["*"]
  resources: [roles, rolebindings]
  operations: [CREATE, UPDATE, DELETE]
{{- end }}
