"""CoViP: contextualized visual personalization of vision-language models, as a library and workflow."""

__version__ = "0.1.0"
