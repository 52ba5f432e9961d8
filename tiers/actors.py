"""Ray actors for the three tiers: thin wrappers around tiers/hosts.py.

Actors ask for no CPU (many share a small machine; the work is what the cores do) and, when the
cluster advertises them, for a sliver of the custom resource of their kind (``tierflow_cloud``,
``tierflow_edge``, ``tierflow_device``) so each lands on a node of its kind: an edge host asks for
the edge one, whatever number of logical edges it holds.
"""

from __future__ import annotations

import ray

from tierflow.tiers.edge_host import EdgeHost
from tierflow.tiers.hosts import Cloud, DeviceHost

KIND_RESOURCE = {"cloud": "tierflow_cloud", "edge": "tierflow_edge", "device": "tierflow_device"}
_RESOURCE_SLIVER = 0.001


def actor_options(kind: str, max_restarts: int = 0) -> dict:
    resource = KIND_RESOURCE[kind]
    options: dict = {"num_cpus": 0, "max_restarts": max_restarts, "max_concurrency": 1}
    if ray.cluster_resources().get(resource, 0) > 0:
        options["resources"] = {resource: _RESOURCE_SLIVER}
    return options


CloudActor = ray.remote(Cloud)
EdgeHostActor = ray.remote(EdgeHost)  # several logical edge servers per process
DeviceHostActor = ray.remote(DeviceHost)
