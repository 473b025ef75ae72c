"""Stand-ins for admission that refuses writes on a real cluster, for the emulator
(kubeemu/emulator.py calls every entry of `Emulator.policies` on each create and update).

What they answer is what an API server answers:
- A ValidatingAdmissionPolicy whose validation fails, with no `reason` set, denies with
  422 Invalid and the message "ValidatingAdmissionPolicy '<policy>' with binding '<binding>'
  denied request: <message>"
  (https://kubernetes.io/docs/reference/access-authn-authz/validating-admission-policy/,
  `reason`: "If not set, StatusReasonInvalid is used"; the text is
  staging/src/k8s.io/apiserver/pkg/admission/plugin/policy/validating/dispatcher.go).
- The ResourceQuota admission plugin denies with 403 Forbidden and
  "exceeded quota: <name>, requested: ..., used: ..., limited: ..."
  (plugin/pkg/admission/resourcequota/controller.go in kubernetes/kubernetes).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import kmock

Policy = Any  # a callable (plural, namespace, object, old) -> None that raises to deny


def _deny(status: int, reason: str, message: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=status, reason=reason, message=message)


@dataclasses.dataclass
class NoExternalIPs:
    """The policy many clusters run against CVE-2020-8554: no Service may set externalIPs."""

    policy: str = "no-external-ips"
    binding: str = "no-external-ips"
    denied: int = 0

    def __call__(
        self, plural: str, namespace: str | None, obj: dict[str, Any], old: Any = None
    ) -> None:
        if plural == "services" and (obj.get("spec") or {}).get("externalIPs"):
            self.denied += 1
            raise _deny(
                422,
                "Invalid",
                f"ValidatingAdmissionPolicy '{self.policy}' with binding '{self.binding}' "
                "denied request: externalIPs are not allowed",
            )


@dataclasses.dataclass
class DeploymentQuota:
    """A ResourceQuota of `count/deployments.apps` that is used up in `namespace`."""

    namespace: str
    name: str = "deployments"
    denied: int = 0
    active: bool = True

    def __call__(
        self, plural: str, namespace: str | None, obj: dict[str, Any], old: Any = None
    ) -> None:
        if self.active and plural == "deployments" and namespace == self.namespace:
            if old is not None:
                return  # an update of an existing Deployment uses no more quota
            self.denied += 1
            raise _deny(
                403,
                "Forbidden",
                f'deployments.apps "{obj["metadata"]["name"]}" is forbidden: exceeded quota: '
                f"{self.name}, requested: count/deployments.apps=1, used: "
                "count/deployments.apps=1, limited: count/deployments.apps=1",
            )
