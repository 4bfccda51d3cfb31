"""A real two-node SLURM cluster on this machine, for the tests (pytest fixture `slurm_cluster`).

Debian's slurm-wlm (slurmctld, slurmd, client) and munge, installed with apt-get when missing (CI starts from
a bare machine), one slurmctld and two slurmd (`-N node1`, `-N node2`, each on its own port) emulating two
nodes. Everything the cluster writes lives in one private folder, with its own munge socket, ports and
SLURM_CONF, so two test sessions on one machine do not meet and the system's /etc/slurm is never touched.
Clients find the cluster through `cluster.env` (SLURM_CONF); a job inherits it from sbatch.

Settings follow ../shared/notes/environment.md: cred_expire=5 (a requeued job restarts after ~6 s, not ~2
min), proctrack/pgid (linuxproc leaves orphans), fast scheduler intervals, MinJobAge=3600 (finished jobs stay
visible to scontrol/squeue), no accounting database.

Needs root (daemons, apt-get). Without it the tests that use it are skipped with that reason, except under
CI=true, where they fail with it (conftest.unavailable): CI cannot go green without a cluster.
"""

from __future__ import annotations

import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import ensure_debian_packages, unavailable

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
NODES = ["node1", "node2"]
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
            "DEADLINE", "PREEMPTED"}


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _install() -> None:
    """apt-get install the daemons if any is missing (a few seconds on Debian 12)."""
    ensure_debian_packages(list(PACKAGES), ["slurmctld", "slurmd", "sbatch", "munged"])


def _slurm_conf(root: Path, ctld_port: int, node_ports: list[int]) -> str:
    host = socket.gethostname().split(".")[0]
    cpus = os.cpu_count() or 2
    mem_mb = max(512, int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 / 4))
    lines = [
        "ClusterName=aurltest",
        # Job ids (hence launch/slurm_node.sh's ports) differ between two test clusters on one machine.
        f"FirstJobId={random.randrange(1000, 1_000_000, 1000)}",
        f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={ctld_port}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={root}/munge/munge.socket,cred_expire=5",
        "MpiDefault=none",
        "ProctrackType=proctrack/pgid",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "SchedulerParameters=bf_interval=1,sched_interval=2",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/filetxt",
        f"JobCompLoc={root}/jobcomp.txt",
        "MinJobAge=3600",
        "KillWait=5",
        "InactiveLimit=0",
        "ReturnToService=2",
        "SlurmdParameters=config_overrides",
        f"StateSaveLocation={root}/state",
        f"SlurmdSpoolDir={root}/spool/%n",
        f"SlurmctldPidFile={root}/slurmctld.pid",
        f"SlurmdPidFile={root}/slurmd.%n.pid",
        f"SlurmctldLogFile={root}/log/slurmctld.log",
        f"SlurmdLogFile={root}/log/slurmd.%n.log",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
    ]
    for name, port in zip(NODES, node_ports, strict=True):
        lines.append(f"NodeName={name} NodeAddr=127.0.0.1 NodeHostname={host} Port={port} CPUs={cpus} "
                     f"RealMemory={mem_mb} State=UNKNOWN")
    lines.append(f"PartitionName=debug Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE State=UP")
    return "\n".join(lines) + "\n"


@dataclass
class SlurmCluster:
    root: Path
    env: dict[str, str]
    procs: list[subprocess.Popen] = field(default_factory=list)

    def run(self, *cmd: str, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("env", self.env)
        r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} -> rc {r.returncode}\n{r.stdout}\n{r.stderr}")
        return r

    def job(self, job_id: str | int) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, ExitCode, Restarts, NodeList, ...)."""
        out = self.run("scontrol", "show", "job", "-o", str(job_id)).stdout
        fields = {}
        for token in out.split():
            key, _, value = token.partition("=")
            fields.setdefault(key, value)
        return fields

    def wait(self, job_id: str | int, timeout: float = 120, states: set[str] = FINISHED) -> dict[str, str]:
        """Wait until the job reaches one of `states`; its scontrol fields."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.job(job_id)
            if info.get("JobState") in states:
                return info
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {info.get('JobState')} after {timeout} s: {info}\n"
                                     + self.logs())
            time.sleep(0.5)

    def logs(self) -> str:
        """The tail of each daemon log, for a failure message."""
        parts = []
        for log in sorted((self.root / "log").glob("*.log")):
            parts.append(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:]))
        return "\n".join(parts)

    def cancel_all(self) -> None:
        self.run("scancel", "--user", "root", check=False)

    def stop(self) -> None:
        # Jobs first: slurmstepd outlives slurmd, so stopping the daemons alone would leave job steps running.
        try:
            self.cancel_all()
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                out = self.run("squeue", "-h", "-o", "%i", check=False, timeout=10).stdout.strip()
                if not out:
                    break
                time.sleep(0.5)
        except (subprocess.SubprocessError, OSError):
            pass
        for p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def _start(root: Path) -> SlurmCluster:
    for sub in ("state", "log", "spool/node1", "spool/node2"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)  # munged (user munge) must reach its folder inside

    munge = root / "munge"
    munge.mkdir(mode=0o700)
    key = munge / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    user = pwd.getpwnam("munge")
    for path in (munge, key):
        os.chown(path, user.pw_uid, user.pw_gid)

    ctld_port, *node_ports = _free_ports(1 + len(NODES))
    conf = root / "slurm.conf"
    conf.write_text(_slurm_conf(root, ctld_port, node_ports))
    env = dict(os.environ, SLURM_CONF=str(conf))
    for var in [v for v in env if v.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))]:
        if var != "SLURM_CONF":  # a test session itself started inside a SLURM job must not leak into ours
            del env[var]
    cluster = SlurmCluster(root=root, env=env)

    def spawn(cmd: list[str], log: str) -> None:
        out = open(root / "log" / log, "ab")  # noqa: SIM115 - the daemon keeps it
        cluster.procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                              start_new_session=True))

    spawn(["runuser", "-u", "munge", "--", "munged", "--foreground", "--force",
           f"--socket={munge}/munge.socket", f"--key-file={key}", f"--pid-file={munge}/munged.pid",
           f"--seed-file={munge}/munged.seed", f"--log-file={munge}/munged.log"], "munged.out")
    _wait_for(lambda: (munge / "munge.socket").exists(), 10, "munged socket", cluster)
    spawn(["slurmctld", "-D", "-c", "-i", "-f", str(conf)], "slurmctld.out")
    _wait_for(lambda: cluster.run("scontrol", "ping", check=False, timeout=10).returncode == 0, 20,
              "slurmctld answering scontrol ping", cluster)
    for name in NODES:
        spawn(["slurmd", "-D", "-N", name, "-f", str(conf)], f"slurmd.{name}.out")

    def all_idle() -> bool:
        out = cluster.run("sinfo", "-h", "-N", "-o", "%N %t", check=False, timeout=10).stdout.split()
        states = dict(zip(out[::2], out[1::2], strict=False))
        return all(states.get(n) == "idle" for n in NODES)

    _wait_for(all_idle, 30, "both nodes idle in sinfo", cluster)
    return cluster


def _wait_for(predicate, timeout: float, what: str, cluster: SlurmCluster) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        for p in cluster.procs:
            if p.poll() is not None:
                cluster.stop()
                pytest.fail(f"{' '.join(map(str, p.args))} exited with {p.returncode}\n{cluster.logs()}")
        if time.monotonic() > deadline:
            cluster.stop()
            pytest.fail(f"timed out after {timeout} s waiting for {what}\n{cluster.logs()}")
        time.sleep(0.2)


@pytest.fixture(scope="session")
def slurm_cluster():
    """A started two-node cluster (node1, node2), torn down at the end of the session."""
    if os.name != "posix" or os.geteuid() != 0:
        unavailable("the SLURM tests install and start slurmctld/slurmd/munged: they need root")
    _install()
    root = Path(tempfile.mkdtemp(prefix="aurl-slurm-", dir="/tmp"))
    cluster = _start(root)
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
