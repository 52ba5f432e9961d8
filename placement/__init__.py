"""tierflow: placement.

Pure-Python placement engine (no Ray, no tiers/orchestrator imports): ``graph`` (layer graph with
measured FLOPs), ``cost`` (batch/round time), ``partition`` (exact min-cut tier split),
``candidates`` (fast planning of many devices), ``shared_edge`` (makespan over a shared edge),
``rings`` (capability rings), ``instance`` (JSON cost-graph instances).
"""
