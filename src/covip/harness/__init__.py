"""The one place that knows the lmms-eval harness: which benchmarks it runs (`catalog`), which of its
model classes drives a registry entry (`models`), our task definitions in its own format (`tasks/`),
how a job lays them out (`tasks.py`), runs it (`runner`) and fetches the data (`download`).

Nothing here imports lmms-eval at import time; `runner` and `download` import their heavy
dependencies inside the functions that need them, so the parse-time checks stay fast.
"""
