"""`kubectl mailwarden start|stop|restart|auto|status NAME [-n NS]`: a kubectl plugin (the
`kubectl-mailwarden` command) for what the README documents as plain kubectl commands. It
runs exactly those commands, so it needs nothing kubectl does not have."""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import subprocess
import sys

from mailwarden.operator import models

RESOURCE = "mailservices.mailwarden.io"


def commands(action: str, name: str, namespace: str | None) -> list[list[str]]:
    ns = ["-n", namespace] if namespace else []
    annotate = ["kubectl", "annotate", RESOURCE, name, *ns, "--overwrite"]
    if action == "start":
        return [[*annotate, f"{models.STATE_ANNOTATION}={models.RUNNING}"]]
    if action == "stop":
        return [[*annotate, f"{models.STATE_ANNOTATION}={models.STOPPED}"]]
    if action == "auto":
        return [[*annotate, f"{models.STATE_ANNOTATION}-"]]
    if action == "restart":
        now = datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()
        return [[*annotate, f"{models.RESTART_ANNOTATION}={now}"]]
    columns = (
        "custom-columns=NAME:.metadata.name,SERVICE:.spec.service,STARTUP:.spec.startup,"
        "STATE:.status.state,SINCE:.status.lastStateChange,"
        'READY:.status.conditions[?(@.type=="Ready")].reason'
    )
    return [["kubectl", "get", RESOURCE, name, *ns, "-o", columns]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kubectl mailwarden", description="Start, stop and restart MailServices."
    )
    parser.add_argument("action", choices=["start", "stop", "restart", "auto", "status"])
    parser.add_argument("name", help="the MailService")
    parser.add_argument("-n", "--namespace", help="its namespace (default: the context's)")
    parser.add_argument(
        "--print", action="store_true", help="print the kubectl commands instead of running them"
    )
    args = parser.parse_args(argv)
    kubectl = os.environ.get("KUBECTL") or shutil.which("kubectl") or "kubectl"
    for command in commands(args.action, args.name, args.namespace):
        if args.print:
            print(" ".join(command))
            continue
        result = subprocess.run([kubectl, *command[1:]], check=False)
        if result.returncode != 0:
            return result.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
