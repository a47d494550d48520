"""Parallel tier: the Ray runner that evaluation and training both use (``runner``: `Runner`,
`RunnerConfig`, the ``--workers``/``--ray-address`` flags; ``ray_launch``: a local Ray runtime and
its actors; ``feeder``: the queue that hands work items to them). Importing it never imports Ray
or torch; they load when a runner starts.
"""
