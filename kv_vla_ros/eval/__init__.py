"""Evaluation room: closed-loop episodes on simulator seeds (``closed_loop``, ``grid``, the
``kv-vla eval`` CLI), recordings replayed through a checkpoint (``bag_eval``, ``kv-vla bag eval``),
the gate against every baseline (``gate_report``), and their tables and plots (``report``,
``bag_report``). May import cache, vla, sim, parallel and data; never rclpy or Ray directly
(the runner in ``parallel`` does).
"""
