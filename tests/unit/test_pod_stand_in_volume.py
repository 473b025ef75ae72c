"""The pod stand-in (kubeemu/pods.py) lays out a ConfigMap volume as the kubelet's atomic
writer does (kubernetes/kubernetes pkg/volume/util/atomic_writer.go): files in a timestamped
directory, `..data` pointing at it, each key a symlink through `..data`; an update swaps
`..data` in one rename and removes the old directory. And "every address" in the listener
configuration becomes the pod's own address, as in a pod's network namespace."""

from __future__ import annotations

import os
import pathlib

import yaml

from kubeemu import pods


def test_a_config_map_volume_is_laid_out_and_swapped_as_the_kubelet_does(
    tmp_path: pathlib.Path,
) -> None:
    volume = tmp_path / "config"
    pods.write_atomically(volume, {"listener.yaml": "one\n", "extra": "x"})
    data = volume / "..data"
    assert data.is_symlink()
    first = os.readlink(data)
    assert first.startswith("..") and (volume / first).is_dir()
    assert os.readlink(volume / "listener.yaml") == "..data/listener.yaml"
    assert (volume / "listener.yaml").read_text() == "one\n"

    pods.write_atomically(volume, {"listener.yaml": "two\n"})
    second = os.readlink(data)
    assert second != first
    assert not (volume / first).exists()  # the old timestamped directory is gone
    assert (volume / "listener.yaml").read_text() == "two\n"  # the same path, new content
    assert not (volume / "extra").exists()  # a key gone from the ConfigMap
    assert not (volume / "..data_tmp").exists()
    assert sorted(p.name for p in volume.iterdir()) == sorted(["..data", second, "listener.yaml"])


def test_every_address_in_the_listener_configuration_is_the_pod_s_own() -> None:
    text = yaml.safe_dump(
        {
            "services": [
                {"name": "mail/smtp", "listen": [{"address": None, "port": 25}]},
                {"name": "mail/imap", "listen": [{"address": "192.0.2.1", "port": 143}]},
            ],
            "metrics": {"address": None, "port": 9090},
        }
    )
    cfg = yaml.safe_load(pods.in_pod(text, "127.70.0.5"))
    assert cfg["services"][0]["listen"] == [{"address": "127.70.0.5", "port": 25}]
    assert cfg["services"][1]["listen"] == [{"address": "192.0.2.1", "port": 143}]
    assert cfg["metrics"] == {"address": "127.70.0.5", "port": 9090}
