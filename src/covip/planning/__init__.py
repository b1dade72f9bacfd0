"""`covip plan`: what a config's run will take (calls, tokens, dollars, GPU-hours), estimated before it
runs, and compared afterwards with what the run's usage records say. Imports nothing here."""
