"""Shared building blocks with no model behind them: tables and their schemas, seeds, settings,
text normalisation, metrics and statistics. Nothing here imports another layer of the package."""
