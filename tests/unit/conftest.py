"""Hypothesis runs without its per-example deadline: on a two-core machine shared with a
broker, a slow example is the machine's load, not the code's (the benchmarks measure speed)."""
from hypothesis import settings

settings.register_profile("trovemeter", deadline=None)
settings.load_profile("trovemeter")
