"""Hosts made of Linux network namespaces, for multi-host training on one machine.

Each host is a network namespace with its own address on a bridge in the root namespace (veth pairs), its own
loopback and its own sshd (own host key, root's login by a key this module generates). The root namespace gets the
bridge's address, so the worker (the DeepSpeed launcher, pdsh, ssh) reaches every host as it would reach real
machines. The file system is shared, as a shared job folder (NFS, a ReadWriteMany volume) is between real hosts.

`ssh` here means the `ssh` of `bin_dir` (first in PATH): `/usr/bin/ssh -F <generated config>`, so plain `ssh ADDR`
(DeepSpeed's ssh check, its `hostname -I`, pdsh's ssh module) logs in without prompts and without touching root's
own ~/.ssh. Everything is removed on `close()`: the processes left in each namespace, the namespaces (with their
veth ends), the bridge. Needs root, `ip`, sshd and ssh-keygen; nothing here skips: a machine that cannot make the
hosts fails the test.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"
SSH = "/usr/bin/ssh"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def _used_networks() -> set[str]:
    out = _ip("-4", "-o", "addr", "show").stdout
    nets = set()
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            nets.add(str(ipaddress.ip_interface(parts[parts.index("inet") + 1]).network))
    return nets


@dataclass
class Host:
    name: str
    """the namespace's name"""
    addr: str
    """its address on the bridge (what a hostfile names)"""
    link: str = ""
    """its veth end on the bridge, in the root namespace (`ip link set LINK down` cuts the host off)"""
    sshd: subprocess.Popen | None = None

    def pids(self) -> list[int]:
        out = _ip("netns", "pids", self.name, check=False).stdout
        return [int(p) for p in out.split()]

    def kill_all(self) -> list[int]:
        """SIGKILL every process in the namespace (its sshd, the ranks ssh started there): the host is gone."""
        pids = self.pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return pids


class NetnsHosts:
    """`n` namespace hosts on their own bridge and /24, named uniquely for this run (parallel runs don't clash)."""

    def __init__(self, n: int, workdir: Path) -> None:
        self.tag = secrets.token_hex(3)
        self.workdir = workdir
        self.bridge = f"vbr{self.tag}"
        self.hosts: list[Host] = []
        self.bin_dir = workdir / "bin"
        self.ssh_config = workdir / "ssh_config"
        self._closed = False
        self.net = self._free_net()
        self.gateway = str(self.net.network_address + 1)
        try:
            self._make_keys()
            self._make_bridge()
            for i in range(n):
                self.add_host()
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------- set-up

    @staticmethod
    def _free_net() -> ipaddress.IPv4Network:
        used = _used_networks()
        for _ in range(100):
            net = ipaddress.ip_network(f"10.77.{secrets.randbelow(250) + 1}.0/24")
            if str(net) not in used:
                return net
        raise RuntimeError("no free 10.77.x.0/24 network for the namespace hosts")

    def _make_keys(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        key = self.workdir / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"vrft-test-{self.tag}", "-f", str(key)],
                       check=True, capture_output=True)
        (self.workdir / "authorized_keys").write_text((self.workdir / "id_ed25519.pub").read_text())
        self.ssh_config.write_text(
            "Host *\n"
            "  User root\n"
            f"  IdentityFile {key}\n"
            "  IdentitiesOnly yes\n"
            "  StrictHostKeyChecking no\n"
            "  UserKnownHostsFile /dev/null\n"
            "  GlobalKnownHostsFile /dev/null\n"
            "  LogLevel ERROR\n"
            "  BatchMode yes\n"
            "  ConnectTimeout 10\n"
            # a host that vanishes without closing its connections (power off, a cable) ends the session
            "  ServerAliveInterval 2\n"
            "  ServerAliveCountMax 3\n"
        )
        self.bin_dir.mkdir(exist_ok=True)
        wrapper = self.bin_dir / "ssh"
        wrapper.write_text(f'#!/bin/sh\nexec {SSH} -F {self.ssh_config} "$@"\n')
        wrapper.chmod(0o755)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation folder

    def _make_bridge(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/{self.net.prefixlen}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def add_host(self) -> Host:
        i = len(self.hosts) + 1
        name = f"vrft-{self.tag}-h{i}"
        addr = str(self.net.network_address + 1 + i)
        outer, inner = f"vh{self.tag}{i}", f"vp{self.tag}{i}"
        _ip("netns", "add", name)
        host = Host(name, addr, outer)
        self.hosts.append(host)  # from here on close() removes it
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        _ip("link", "set", outer, "master", self.bridge)
        _ip("link", "set", outer, "up")
        _ip("link", "set", inner, "netns", name)
        # every host's interface is `eth0`, as on real machines of one kind: GLOO_SOCKET_IFNAME names it
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", inner, "name", "eth0"], check=True)
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "netns", "exec", name, "ip", "addr", "add", f"{addr}/{self.net.prefixlen}", "dev",
                        "eth0"], check=True)
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "eth0", "up"], check=True)
        subprocess.run(["ip", "netns", "exec", name, "ip", "route", "add", "default", "via", self.gateway],
                       check=True)
        self._start_sshd(host)
        return host

    def _start_sshd(self, host: Host) -> None:
        d = self.workdir / host.name
        d.mkdir(exist_ok=True)
        hostkey = d / "ssh_host_ed25519_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(hostkey)], check=True,
                       capture_output=True)
        config = d / "sshd_config"
        config.write_text(
            f"ListenAddress {host.addr}\n"
            "Port 22\n"
            f"HostKey {hostkey}\n"
            f"AuthorizedKeysFile {self.workdir / 'authorized_keys'}\n"
            f"PidFile {d / 'sshd.pid'}\n"
            "StrictModes no\n"
            "PermitRootLogin prohibit-password\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            "ClientAliveInterval 2\n"
            "ClientAliveCountMax 3\n"
            # the host's own environment, as a real host's profile would set it. gloo finds its address from the
            # host name, which resolves to loopback here (the namespaces share the machine's name): the interface
            # is named instead. One intra-op thread per rank, as the one-host run has (same threads, same sums).
            "SetEnv GLOO_SOCKET_IFNAME=eth0 OMP_NUM_THREADS=1\n"
        )
        host.sshd = subprocess.Popen(
            ["ip", "netns", "exec", host.name, SSHD, "-D", "-e", "-f", str(config)],
            stdout=open(d / "sshd.log", "wb"), stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if host.sshd.poll() is not None:
                raise RuntimeError(f"sshd of {host.name} exited: {(d / 'sshd.log').read_text()[-2000:]}")
            r = subprocess.run([str(self.bin_dir / "ssh"), host.addr, "hostname", "-I"], capture_output=True,
                               text=True, timeout=30)
            if r.returncode == 0 and host.addr in r.stdout.split():
                return
            time.sleep(0.3)
        raise RuntimeError(f"cannot ssh into {host.name} at {host.addr}: {r.stderr[-2000:]}")

    # ---------------------------------------------------------------- use

    def env(self) -> dict[str, str]:
        """The environment a worker needs to reach the hosts: our `ssh` first in PATH."""
        return {"PATH": f"{self.bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}

    def hostfile(self, hosts: list[Host], slots: int = 1) -> Path:
        path = self.workdir / ("hostfile-" + "-".join(h.name.rsplit("-", 1)[1] for h in hosts))
        path.write_text("".join(f"{h.addr} slots={slots}\n" for h in hosts))
        return path

    def run(self, host: Host, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bin_dir / "ssh"), host.addr, *cmd], capture_output=True, text=True,
                              timeout=timeout)

    # ---------------------------------------------------------------- tear-down

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for host in self.hosts:
            if host.sshd is not None and host.sshd.poll() is None:
                host.sshd.kill()
                host.sshd.wait(10)
            host.kill_all()
        for host in self.hosts:
            for _ in range(50):  # the namespace's processes take a moment to be reaped
                if not host.pids():
                    break
                time.sleep(0.1)
            _ip("netns", "delete", host.name, check=False)  # its veth end goes with it, and so the pair
        _ip("link", "delete", self.bridge, check=False)

    def __enter__(self) -> NetnsHosts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
