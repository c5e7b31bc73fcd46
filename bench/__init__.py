"""Side-by-side benchmark of stagecast: a mock upstream, a load client and a runner.

Run ``python -m bench.runner`` (or ``make bench``); see ``bench/README.md``.
"""
