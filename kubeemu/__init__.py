"""An emulator of the Kubernetes API for the operator's tests and the operator benchmark:
kmock plus what a kopf operator relies on (kubeemu.emulator), admission of the project's
custom resources with their schemas and CEL rules (crdcheck), and stand-ins for cluster
components the tests need (Service address allocation, pods running real listeners,
quantities, printer columns, admission refusals).

Not part of mailwarden and not shipped: it lives outside tests/ so that bench/ can use it
without importing the test suite."""
