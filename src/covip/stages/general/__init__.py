"""General multi-image benchmarks through lmms-eval: settings, the tiny offline benchmark, per-job
scoring, and the summary with each trained policy against its base. Imports none of its modules."""
