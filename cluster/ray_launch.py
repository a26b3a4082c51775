"""The Ray scheduler of `iipa launch train`: training as a Ray job on an existing Ray cluster.

A placement group reserves one bundle per node (strictly spread over distinct nodes), an actor in
each bundle runs that node's torchrun, and the first actor's node hosts the rendezvous. Ray only
places and watches the launchers; torchrun and DDP do the rest exactly as on any other cluster.
"""
from __future__ import annotations

import os
import subprocess
import sys


class NodeLauncher:
    """Runs one node's torchrun in the actor's node and returns its exit status."""

    def ip(self) -> str:
        """The address Ray registered for this node (`ray start --node-ip-address`), which other
        nodes reach it by; the host's default address may not be the one the cluster uses."""
        import ray

        node_id = ray.get_runtime_context().get_node_id()
        return next(n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == node_id)

    def run(self, cmd: list[str], cwd: str, env: dict[str, str]) -> int:
        # This node's Python, which may live elsewhere than the driver's. `env` wins over the
        # actor's environment, where Ray sets OMP_NUM_THREADS to the actor's one CPU.
        return subprocess.call([sys.executable, *cmd[1:]], cwd=cwd if os.path.isdir(cwd) else None,
                               env={**os.environ, **env})


def with_endpoint(cmd: list[str], endpoint: str) -> list[str]:
    return [f"--rdzv-endpoint={endpoint}" if c.startswith("--rdzv-endpoint=") else c for c in cmd]


def run_on_ray(config, cmd: list[str], env: dict[str, str]) -> int:
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    ray.init(address=config.ray_address or os.environ.get("RAY_ADDRESS") or None, log_to_driver=True)
    gpus = config.gpus_per_node if ray.cluster_resources().get("GPU", 0) else 0
    bundle = {"CPU": 1, **({"GPU": gpus} if gpus else {})}
    group = placement_group([bundle] * config.nodes, strategy="STRICT_SPREAD" if config.nodes > 1 else "PACK")
    ray.get(group.ready(), timeout=600)
    remote = ray.remote(num_cpus=1, num_gpus=gpus)(NodeLauncher)
    actors = [remote.options(scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=i)).remote()
              for i in range(config.nodes)]
    # The rendezvous host the user named (one of the nodes, by an address the others reach);
    # without one, the node of the first launcher hosts it.
    host, _, port = config.rdzv.rpartition(":")
    cmd = with_endpoint(cmd, f"{host or ray.get(actors[0].ip.remote())}:{port}")
    try:
        codes = ray.get([a.run.remote(cmd, os.getcwd(), env) for a in actors])
    finally:
        remove_placement_group(group)
    return max(codes)
