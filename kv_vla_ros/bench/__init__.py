"""Benchmark room (`kv-vla bench ...`): every benchmark and the soak, above what they measure.

Holds: ``cache`` (cache latency/KV bytes vs full), ``paper`` / ``paper_pi0`` / ``floors`` (paper-scale
latency, KV bytes, FLOPs and the bandwidth floor), ``dtype`` (half precision agreement),
``control_rate`` / ``seams`` / ``delayed_node`` (the policy node's rate and action-chunk seams over
DDS), ``soak`` (hours of DDS), ``image`` (frame conversion), ``eval_scaling`` (Ray), ``arm`` (the arm
world's cost). May import every tier (it is the last); nothing imports it but the CLI.
"""
