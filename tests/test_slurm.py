"""SLURM: the pipeline and stage jobs on a real two-node cluster started by the tests (slurm_cluster.py)."""

from __future__ import annotations

import time

from slurm_cluster import slurm_cluster  # noqa: F401 - the fixture


def test_cluster_runs_a_job_across_both_nodes(slurm_cluster, tmp_path):  # noqa: F811
    script = tmp_path / "two_nodes.sh"
    script.write_text("#!/bin/bash\nsrun --nodes 2 --ntasks-per-node 1 bash -c 'echo $SLURMD_NODENAME $SLURM_NODEID'\n")
    t0 = time.monotonic()
    job = slurm_cluster.run("sbatch", "--parsable", "--nodes", "2", "--ntasks-per-node", "1",
                            f"--output={tmp_path}/%j.out", str(script), cwd=tmp_path).stdout.strip()
    info = slurm_cluster.wait(job, timeout=60)
    assert info["JobState"] == "COMPLETED", info
    lines = sorted((tmp_path / f"{job}.out").read_text().split("\n"))
    assert [ln for ln in lines if ln] == ["node1 0", "node2 1"]
    assert time.monotonic() - t0 < 30
