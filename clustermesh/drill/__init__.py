"""Failover drills: break a cluster of a running mesh on purpose, measure how the mesh reacts, prove nothing was lost.

    target        the mesh under drill, from its mesh file (clusters, etcds, agents, control endpoint)
    app_manifest  the example app's manifest of one cluster, edited by the drill and restored after
    churn         a steady rate of endpoint changes while the fault lasts
    faults        the fault injectors (kill, hang, cut, backends down, rotate, compact) and their heals
    observer      every agent, watched through its gRPC API (status, cache changes) and its DNS
    timeline      what happened when: the drill's actions and the agents' reactions
    entries       one comparable form for a record in etcd and in an agent's cache
    truth         what each cluster's etcd holds, decoded by the codec
    verdict       agents' caches (and etcds against manifests) compared with the truth: stale, missing
    scenarios     etcd-kill, etcd-hang, apiserver-kill, backends-down, partition, cert-rotate, compaction
    runner        one drill from healthy mesh to verdict, healing on every path
    report        the result: verdict, times per agent and worst, checks, the timeline (JSON)
    plot          the timeline as a PNG, one lane per agent

Everything the CLI and benchmarks need is re-exported here.
"""

from clustermesh.drill.plot import write as write_plot
from clustermesh.drill.report import Report
from clustermesh.drill.runner import DrillConfig, NotHealthy, run
from clustermesh.drill.scenarios import SCENARIOS

__all__ = ["SCENARIOS", "DrillConfig", "NotHealthy", "Report", "run", "write_plot"]
