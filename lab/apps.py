"""Real, unmodified server applications on real servers: nginx from Debian's package.

The binary is Debian's own, unpacked from the package into build/apps (no
installation: installing would start a system nginx on the machine's port 80).
It runs in a node's namespace, from the host's tree (the VM guest sees it over
its 9p root), with a configuration of the lab's: one process, its pid, logs and
temporary files under a prefix of its own, and an access log that records what
nginx's own getpeername/getsockname said.

    web = Nginx.start(lab, "rs1", 8080, socket="dual")
    r = http_get(lab, "client", "203.0.113.10", 80)       # curl, on the client node
    web.log()  ->  [{"remote_addr": "198.51.100.10", "remote_port": 40112, ...}]
    web.stop()
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.errors import LabError
from lab.kernel import Job
from lab.net import Lab

REPO = Path(__file__).resolve().parent.parent
APPS = REPO / "build" / "apps"
SOCKETS = ("inet", "inet6", "dual")
# nginx's own variables: its getpeername ($remote_*) and getsockname ($server_*)
LOG_FIELDS = ("remote_addr", "remote_port", "server_addr", "server_port", "status")


def nginx_binary() -> Path:
    """Debian's nginx binary, unpacked from its package on first use."""
    binary = APPS / "nginx" / "usr" / "sbin" / "nginx"
    if binary.exists():
        return binary
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise LabError("nginx: apt-get and dpkg-deb are needed to fetch Debian's nginx package")
    APPS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=APPS, prefix=".nginx-") as tmp:
        for attempt in (1, 2):
            p = subprocess.run(["apt-get", "download", "nginx"], cwd=tmp, capture_output=True, text=True)
            if p.returncode == 0:
                break
            if attempt == 1:  # lists older than the mirror: refresh them once
                subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True)
        else:
            raise LabError(f"apt-get download nginx failed: {p.stderr.strip().splitlines()[-1:]}")
        deb = next(Path(tmp).glob("nginx_*.deb"))
        out = Path(tmp) / "root"
        subprocess.run(["dpkg-deb", "-x", str(deb), str(out)], check=True, capture_output=True)
        if not (out / "usr" / "sbin" / "nginx").exists():
            raise LabError(f"{deb.name} has no usr/sbin/nginx")
        (out / "package").write_text(deb.name + "\n")
        shutil.rmtree(APPS / "nginx", ignore_errors=True)
        out.rename(APPS / "nginx")
    return binary


def listen_line(socket: str, port: int) -> str:
    """nginx's listen directive for a socket kind: IPv4 only, IPv6 only, dual-stack."""
    return {
        "inet": f"listen 0.0.0.0:{port};",
        "inet6": f"listen [::]:{port} ipv6only=on;",
        "dual": f"listen [::]:{port} ipv6only=off;",
    }[socket]


def config(prefix: str, socket: str, port: int) -> str:
    fmt = " ".join(f"${f}" for f in LOG_FIELDS)
    temps = "\n".join(
        f"    {kind}_temp_path {prefix}/tmp/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log stderr notice;
events {{ worker_connections 64; }}
http {{
    log_format toalab '{fmt}';
    access_log {prefix}/access.log toalab;
{temps}
    server {{
        {listen_line(socket, port)}
        location / {{ return 200 "toalab $remote_addr $remote_port\\n"; }}
    }}
}}
"""


@dataclass
class Nginx:
    lab: Lab
    node: str
    prefix: str
    job: Job

    @classmethod
    def start(cls, lab: Lab, node: str, port: int, *, socket: str, timeout: float = 20.0) -> Nginx:
        if socket not in SOCKETS:
            raise LabError(f"nginx: socket must be one of {', '.join(SOCKETS)}, not {socket!r}")
        binary = nginx_binary()
        prefix = f"/tmp/toalab-nginx-{lab.name}-{node}"
        conf = config(prefix, socket, port)
        lab.exec(
            node,
            ["sh", "-c", 'rm -rf "$1" && mkdir -p "$1/tmp" && cat > "$1/nginx.conf"', "sh", prefix],
            input=conf,
        ).check()
        job = lab.spawn(node, [str(binary), "-p", prefix, "-e", "stderr", "-c", f"{prefix}/nginx.conf"])
        web = cls(lab, node, prefix, job)
        deadline = time.monotonic() + timeout
        while lab.exec(node, ["test", "-s", f"{prefix}/nginx.pid"]).returncode != 0:
            if not job.running or time.monotonic() > deadline:
                web.stop()
                raise LabError(f"nginx on {node} did not start: {job.output()[1].strip()[-300:]}")
            time.sleep(0.05)
        return web

    def log(self) -> list[dict[str, Any]]:
        """The access log, one dict per request (ports as ints)."""
        r = self.lab.exec(self.node, ["cat", f"{self.prefix}/access.log"])
        out = []
        for line in r.stdout.splitlines():
            parts = line.split()
            if len(parts) == len(LOG_FIELDS):
                rec: dict[str, Any] = dict(zip(LOG_FIELDS, parts, strict=True))
                for k in ("remote_port", "server_port", "status"):
                    rec[k] = int(rec[k]) if rec[k].isdigit() else rec[k]
                out.append(rec)
        return out

    def stop(self) -> None:
        if self.job.running:
            self.job.terminate()
        self.lab.exec(self.node, ["rm", "-rf", self.prefix])


@dataclass(frozen=True)
class HttpResult:
    status: int
    body: str
    local_ip: str
    local_port: int
    error: str = ""


def http_get(lab: Lab, node: str, host: str, port: int, *, timeout: float = 10.0) -> HttpResult:
    """One HTTP GET with curl from `node`; the client's own address as curl saw it."""
    h = f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    argv = [
        "curl",
        "-sS",
        "--max-time",
        str(int(timeout)),
        "-w",
        r"\n@@ %{http_code} %{local_ip} %{local_port}\n",
        f"http://{h}:{port}/",
    ]
    r = lab.exec(node, argv, timeout=timeout + 10)
    body, _, tail = r.stdout.rpartition("@@ ")
    parts = tail.split()
    if len(parts) != 3 or not parts[0].isdigit():
        return HttpResult(0, "", "", 0, r.stderr.strip() or f"curl exited {r.returncode}")
    return HttpResult(
        int(parts[0]),
        body.strip(),
        parts[1],
        int(parts[2]) if parts[2].isdigit() else 0,
        r.stderr.strip() if r.returncode else "",
    )
