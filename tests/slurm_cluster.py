"""A real single-node SLURM cluster for tests, installed from Debian packages when missing.

Config, state, spool and daemon logs live in one directory, nothing under /etc. The commands we
run find the config through ``SLURM_CONF``; inside a job Snakemake's jobstep executor strips every
``SLURM_*`` variable before its ``srun``, so slurmd runs "configless" (fetching the config from
slurmctld) and publishes it at /run/slurm/conf, where client commands look when nothing else is set.
The node advertises one GPU (a generic resource backed by /dev/null), so jobs asking for a GPU are
scheduled as on a GPU cluster although this machine has none.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import debian_packages

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
COMMANDS = ("slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "munged", "munge")
PARTITION = "debug"
MUNGE_SOCKET_DIR = Path("/run/munge")
CONFIGLESS_LINK = Path("/run/slurm/conf")
# munged and CONFIGLESS_LINK are the machine's: test sessions take turns with the cluster.
LOCK = Path(tempfile.gettempdir()) / "circuitflow-slurm-test.lock"


class SlurmUnavailable(Exception):
    """SLURM cannot be installed or started here: the caller skips, printing why."""


def ensure_installed() -> None:
    try:
        debian_packages.ensure_installed(COMMANDS, PACKAGES)
    except debian_packages.Unavailable as reason:
        raise SlurmUnavailable(str(reason)) from None


@dataclass
class Cluster:
    root: Path
    env: dict  # os.environ plus SLURM_CONF: the environment for SLURM commands and Snakemake
    lock: int  # file descriptor holding LOCK
    processes: list[subprocess.Popen] = field(default_factory=list)

    def run(self, *command: str) -> str:
        return subprocess.run(
            command, env=self.env, capture_output=True, text=True, check=True, timeout=30
        ).stdout

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.root.glob("*.log"))
        )

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        # slurmd leaves its link to our config cache behind; it would dangle once root is gone.
        link = CONFIGLESS_LINK
        if link.is_symlink() and Path(os.readlink(link)).is_relative_to(self.root):
            link.unlink()
        os.close(self.lock)


def start(root: Path, timeout: float = 60, lock_timeout: float = 900) -> Cluster:
    """Start munged (unless one answers already), slurmctld and slurmd; wait for an idle node."""
    lock = _take_turn(lock_timeout)
    host = socket.gethostname().split(".")[0]
    port = free_port()
    for sub in ("state", "spool"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "slurm.conf").write_text(slurm_conf(root, host, port))
    # slurmd drops a GPU that has no device file: /dev/null stands in for one.
    (root / "gres.conf").write_text(f"NodeName={host} Name=gpu Count=1 File=/dev/null\n")
    cluster = Cluster(root, dict(os.environ, SLURM_CONF=str(root / "slurm.conf")), lock)
    try:
        if not _munge_answers():
            MUNGE_SOCKET_DIR.mkdir(exist_ok=True)
            shutil.chown(MUNGE_SOCKET_DIR, "munge", "munge")
            # --force: start even over a stale socket left by a munged that was killed.
            cluster.processes.append(_daemon(
                root / "munged.log", os.environ, "munged", "--foreground", "--force", user="munge"
            ))
            _wait(cluster, _munge_answers, timeout, "munged to answer")
        # -D: stay in the foreground, logging to stdout, so these processes are ours to stop.
        cluster.processes.append(_daemon(root / "slurmctld.log", cluster.env, "slurmctld", "-D"))
        # Without SLURM_CONF: slurmd fetches the config and publishes it at CONFIGLESS_LINK.
        cluster.processes.append(_daemon(
            root / "slurmd.log", os.environ, "slurmd", "-D", "--conf-server", f"127.0.0.1:{port}"
        ))
        _wait(cluster, lambda: _node_state(cluster) == "idle", timeout, "the node to be idle")
    except BaseException:
        cluster.stop()
        raise
    return cluster


def slurm_conf(root: Path, host: str, port: int) -> str:
    return f"""\
ClusterName=circuitflow-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={port}
SlurmdPort={free_port()}
SlurmctldParameters=enable_configless
SlurmUser=root
AuthType=auth/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
# Finished jobs stay visible to squeue and scontrol for an hour: with no accounting database the
# executor's status queries (squeue) and the test's checks read them there.
MinJobAge=3600
GresTypes=gpu
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={node_memory_mb()} Gres=gpu:1
PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_memory_mb() -> int:
    # What slurmd measures: configuring more than that would drain the node.
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20


def _take_turn(timeout: float) -> int:
    fd = os.open(LOCK, os.O_CREAT | os.O_RDWR)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise SlurmUnavailable(f"another test session held {LOCK} for {timeout} s")
            time.sleep(1)


def _munge_answers() -> bool:
    return subprocess.run(["munge", "-n"], capture_output=True).returncode == 0


def _daemon(log: Path, env, *command: str, user: str | None = None) -> subprocess.Popen:
    ids = {"user": user, "group": user, "extra_groups": []} if user else {}
    with open(log, "w") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, **ids)


def _node_state(cluster: Cluster) -> str:
    result = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=cluster.env,
                            capture_output=True, text=True)
    return result.stdout.strip()


def _wait(cluster: Cluster, ready, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        exited = [p.args for p in cluster.processes if p.poll() is not None]
        if exited or time.monotonic() > deadline:
            raise SlurmUnavailable(
                f"SLURM did not start: waited for {what}; exited: {exited}\n{cluster.logs()}"
            )
        time.sleep(0.5)
