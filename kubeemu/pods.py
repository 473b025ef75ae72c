"""A stand-in for the ReplicaSet controller and the kubelet, for listener Deployments in the
API emulator (kubeemu/emulator.py): each pod of such a Deployment is a real
`mailwarden-listener` process on an address of its own in 127.0.0.0/8, reported in the
emulator as the kubelet reports a pod (status.podIP, phase Running, condition Ready once
/readyz answers), so that the operator talks to real listeners over HTTP.

What it models, and from where:
- pods of a Deployment: `replicas` pods with the template's labels plus `pod-template-hash`,
  named `<deployment>-<hash>-<suffix>`; a template change replaces them (a new pod first,
  then the old one), a scale-down and a deletion terminate pods (deletionTimestamp, SIGTERM,
  the listener drains, then the object goes) — the Deployment and ReplicaSet controllers,
  https://kubernetes.io/docs/concepts/workloads/controllers/deployment/ ;
- a ConfigMap volume laid out as the kubelet's atomic writer does it
  (kubernetes/kubernetes pkg/volume/util/atomic_writer.go): the files in a timestamped
  directory `..<timestamp>`, a symlink `..data` to it, and for each key a symlink
  `<key> -> ..data/<key>`; an update writes a new timestamped directory, points `..data_tmp`
  at it, renames `..data_tmp` over `..data` (one atomic step) and removes the old directory;
- a pod's network namespace: in a pod, "every address" is the pod's own address. Here every
  pod shares the host's, so the stand-in writes the pod's address where the listener
  configuration says "every address" (listen endpoints and the metrics port) — the one
  change made to the ConfigMap's content.

Not modelled: Secret volumes (TLS services), probes after start-up (a pod that stops
answering stays Ready, as it would until its probes fail), restarts of exited containers,
scheduling and nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import hashlib
import json
import os
import pathlib
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from typing import TYPE_CHECKING, Any

import aiohttp
import yaml

from mailwarden.operator import naming

if TYPE_CHECKING:
    from kubeemu.emulator import Emulator

LISTENER_APP = naming.APP_NAME
READY_DEADLINE = 30.0


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def template_hash(template: dict[str, Any]) -> str:
    text = json.dumps(template, sort_keys=True).encode()
    return hashlib.sha256(text).hexdigest()[:10]


class Addresses:
    """Pod addresses in 127.0.0.0/8, one per pod, never reused within a run. The second
    octet comes from the process id, so two test runs on one machine rarely meet; an
    address whose metrics port is taken is skipped."""

    def __init__(self) -> None:
        self._octet = 64 + os.getpid() % 128
        self._next = 1

    def take(self, port: int) -> str:
        while True:
            n = self._next
            self._next += 1
            ip = f"127.{self._octet}.{n // 250}.{n % 250 + 2}"
            with socket.socket() as s:
                try:
                    s.bind((ip, port))
                except OSError:
                    continue
            return ip


def write_atomically(volume: pathlib.Path, data: dict[str, str]) -> None:
    """The kubelet's atomic writer for a ConfigMap volume (see the module docstring)."""
    volume.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("..%Y_%m_%d_%H_%M_%S.")
    fresh = pathlib.Path(tempfile.mkdtemp(prefix=stamp, dir=volume))
    for key, value in data.items():
        (fresh / key).write_text(value)
    data_link = volume / "..data"
    old = os.readlink(data_link) if data_link.is_symlink() else None
    tmp_link = volume / "..data_tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp_link.unlink()
    tmp_link.symlink_to(fresh.name)
    os.rename(tmp_link, data_link)
    for key in data:
        link = volume / key
        if not link.is_symlink():
            link.symlink_to(f"..data/{key}")
    for child in volume.iterdir():
        if child.is_symlink() and child.name not in data and not child.name.startswith(".."):
            child.unlink()  # a key gone from the ConfigMap
    if old is not None and old != fresh.name:
        shutil.rmtree(volume / old, ignore_errors=True)


def in_pod(text: str, ip: str) -> str:
    """The listener configuration as a pod with address `ip` sees it: "every address"
    (no address) is the pod's own."""
    cfg = yaml.safe_load(text) or {}
    for svc in cfg.get("services") or []:
        for ep in svc.get("listen") or []:
            if ep.get("address") is None:
                ep["address"] = ip
    metrics = cfg.setdefault("metrics", {})
    if metrics.get("address") is None:
        metrics["address"] = ip
    return yaml.safe_dump(cfg, sort_keys=False)


class Pod:
    def __init__(self, name: str, ip: str, root: pathlib.Path, template_hash: str) -> None:
        self.name = name
        self.ip = ip
        self.root = root
        self.template_hash = template_hash
        self.process: subprocess.Popen[bytes] | None = None
        self.config_maps: dict[str, tuple[str, str]] = {}  # volume -> (ConfigMap, mount path)
        self.terminating = False

    @property
    def log(self) -> pathlib.Path:
        return self.root / "listener.log"

    def volume(self, name: str) -> pathlib.Path:
        return self.root / "volumes" / name


class PodStandIn:
    """Runs the pods of the emulator's listener Deployments. Called by the emulator (with its
    lock held) whenever a Deployment, ConfigMap or Pod changes or goes."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.root = pathlib.Path(tempfile.mkdtemp(prefix="mailwarden-pods-"))
        self.addresses = Addresses()
        # (namespace, pod name) -> Pod
        self.pods: dict[tuple[str, str], Pod] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- hooks called by the emulator -------------------------------------------------------

    async def changed(self, plural: str, key: Any) -> None:
        if plural == "deployments":
            await self._sync(key[1], key[2])
        elif plural == "configmaps":
            cm = self.emulator._live(key)
            if cm is not None:
                self._config_map_changed(key[1], key[2], cm.get("data") or {})

    async def deleted(self, plural: str, namespace: str, name: str) -> None:
        if plural == "deployments":
            for (ns, pod_name), pod in list(self.pods.items()):
                if ns == namespace and pod_name.startswith(f"{name}-"):
                    await self._terminate(ns, pod)
        elif plural == "pods":
            pod = self.pods.get((namespace, name))
            if pod is not None and not pod.terminating:
                # Deleted by hand: gone at once (no grace), and the ReplicaSet replaces it.
                self._stop_process(pod, signal.SIGKILL)
                self.pods.pop((namespace, name), None)
                deployment = name.rsplit("-", 2)[0]
                if self.emulator._live(self._key("deployments", namespace, deployment)):
                    await self._sync(namespace, deployment)

    # -- test helpers -----------------------------------------------------------------------

    def of(self, namespace: str, deployment: str) -> list[Pod]:
        return [
            p
            for (ns, name), p in sorted(self.pods.items())
            if ns == namespace and name.startswith(f"{deployment}-") and not p.terminating
        ]

    def freeze(self, pod: Pod) -> None:
        """The pod's process stops answering (SIGSTOP): connections are accepted by the
        kernel and never served, as with a hung process."""
        assert pod.process is not None
        pod.process.send_signal(signal.SIGSTOP)

    def thaw(self, pod: Pod) -> None:
        assert pod.process is not None
        pod.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        for pod in self.pods.values():
            self._stop_process(pod, signal.SIGKILL)
        for task in self._tasks:
            task.cancel()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- the ReplicaSet controller ----------------------------------------------------------

    def _key(self, plural: str, namespace: str, name: str) -> Any:
        import kmock

        group = "apps/v1" if plural == "deployments" else "v1"
        return (kmock.resource(f"{group}/{plural}"), namespace, name)

    async def _sync(self, namespace: str, name: str) -> None:
        dep = self.emulator._live(self._key("deployments", namespace, name))
        if dep is None:
            return
        template = dep["spec"]["template"]
        labels = template.get("metadata", {}).get("labels") or {}
        if labels.get(naming.LABEL_NAME) != LISTENER_APP:
            return  # only listener Deployments get real pods
        want = int(dep["spec"].get("replicas", 1))
        digest = template_hash(template)
        mine = self.of(namespace, name)
        current = [p for p in mine if p.template_hash == digest]
        old = [p for p in mine if p.template_hash != digest]
        while len(current) < want:
            current.append(await self._create(namespace, name, dep, digest))
        for pod in current[want:] + old:
            await self._terminate(namespace, pod)

    async def _create(
        self, namespace: str, deployment: str, dep: dict[str, Any], digest: str
    ) -> Pod:
        template = copy.deepcopy(dep["spec"]["template"])
        spec = template.get("spec") or {}
        container = spec["containers"][0]
        metrics_port = next(
            (p["containerPort"] for p in container.get("ports", []) if p.get("name") == "metrics"),
            9090,
        )
        name = f"{deployment}-{digest}-{secrets.token_hex(3)[:5]}"
        ip = self.addresses.take(int(metrics_port))
        pod = Pod(name, ip, self.root / namespace / name, digest)
        pod.root.mkdir(parents=True)
        self.pods[(namespace, name)] = pod
        mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
        for volume in spec.get("volumes", []):
            cm = (volume.get("configMap") or {}).get("name")
            if cm is not None and volume["name"] in mounts:
                pod.config_maps[volume["name"]] = (cm, mounts[volume["name"]])
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {
                    **(template.get("metadata", {}).get("labels") or {}),
                    "pod-template-hash": digest,
                },
                "annotations": dict(template.get("metadata", {}).get("annotations") or {}),
                "ownerReferences": [
                    {
                        "apiVersion": "apps/v1",
                        "kind": "ReplicaSet",
                        "name": f"{deployment}-{digest}",
                        "uid": dep["metadata"].get("uid", ""),
                        "controller": True,
                    }
                ],
            },
            "spec": spec,
            "status": {"phase": "Pending"},
        }
        await self.emulator._put_object(self._key("pods", namespace, name), body, "ADDED")
        for volume, (cm, _) in pod.config_maps.items():
            live = self.emulator._live(self._key("configmaps", namespace, cm))
            write_atomically(pod.volume(volume), self._contents(live, ip))
        command = [_path_in_pod(pod, arg) for arg in container.get("command", [])]
        if command[:1] != ["mailwarden-listener"]:
            raise RuntimeError(f"{deployment}: not a listener command: {command}")
        with pod.log.open("wb") as log:
            # A fork and exec, quick; the process is watched without blocking (_reap).
            pod.process = subprocess.Popen(  # noqa: ASYNC220
                [sys.executable, "-m", "mailwarden.listener", *command[1:]],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self._spawn(self._report_ready(namespace, pod, int(metrics_port)))
        return pod

    @staticmethod
    def _contents(cm: dict[str, Any] | None, ip: str) -> dict[str, str]:
        data = dict((cm or {}).get("data") or {})
        if naming.CONFIG_FILE in data:
            data[naming.CONFIG_FILE] = in_pod(data[naming.CONFIG_FILE], ip)
        return data

    def _config_map_changed(self, namespace: str, name: str, data: dict[str, str]) -> None:
        for (ns, _), pod in self.pods.items():
            if ns != namespace or pod.terminating:
                continue
            for volume, (cm, _) in pod.config_maps.items():
                if cm == name:
                    write_atomically(pod.volume(volume), self._contents({"data": data}, pod.ip))

    async def _terminate(self, namespace: str, pod: Pod) -> None:
        if pod.terminating:
            return
        pod.terminating = True
        key = self._key("pods", namespace, pod.name)
        live = self.emulator._live(key)
        if live is not None:
            live["metadata"]["deletionTimestamp"] = _now()
            await self.emulator._put_object(key, live, "MODIFIED")
        self._stop_process(pod, signal.SIGTERM)
        self._spawn(self._reap(namespace, pod))

    # -- the kubelet ------------------------------------------------------------------------

    async def _report_ready(self, namespace: str, pod: Pod, port: int) -> None:
        url = f"http://{pod.ip}:{port}/readyz"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_DEADLINE
        async with aiohttp.ClientSession() as http:
            while loop.time() < deadline and pod.process is not None:
                if pod.process.poll() is not None:
                    return  # exited: stays Pending; its log says why
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with asyncio.timeout(1):
                        async with http.get(url) as r:
                            if r.status == 200:
                                break
                await asyncio.sleep(0.05)
            else:
                return
        async with self.emulator._lock:
            key = self._key("pods", namespace, pod.name)
            live = self.emulator._live(key)
            if live is None or pod.terminating:
                return
            stamp = _now()
            live["status"] = {
                "phase": "Running",
                "podIP": pod.ip,
                "podIPs": [{"ip": pod.ip}],
                "hostIP": "127.0.0.1",
                "startTime": stamp,
                "conditions": [
                    {"type": t, "status": "True", "lastTransitionTime": stamp}
                    for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
                ],
                "containerStatuses": [
                    {"name": naming.CONTAINER, "ready": True, "started": True, "restartCount": 0}
                ],
            }
            await self.emulator._put_object(key, live, "MODIFIED")

    async def _reap(self, namespace: str, pod: Pod) -> None:
        if pod.process is not None:
            await asyncio.to_thread(pod.process.wait)
        self.pods.pop((namespace, pod.name), None)
        shutil.rmtree(pod.root, ignore_errors=True)
        async with self.emulator._lock:
            key = self._key("pods", namespace, pod.name)
            if self.emulator._live(key) is not None:
                await self.emulator._remove_object(key)

    @staticmethod
    def _stop_process(pod: Pod, sig: signal.Signals) -> None:
        proc = pod.process
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)  # a frozen process must see the signal
            proc.send_signal(sig)
        if sig == signal.SIGKILL:
            proc.wait(5)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _path_in_pod(pod: Pod, arg: str) -> str:
    """A path under a ConfigMap volume's mount path, as this pod's stand-in directory."""
    for volume, (_, mount) in pod.config_maps.items():
        if arg == mount or arg.startswith(mount.rstrip("/") + "/"):
            return str(pod.volume(volume)) + arg[len(mount.rstrip("/")) :]
    return arg
