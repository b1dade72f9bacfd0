"""The run's report (rule `report`): our rows beside the paper's published rows, where every number came
from and under which measurement protocol, and the plots.

Modules: `tables` (the Markdown summary and its tables), `sections` (the "Does it look?" and human
evaluation sections), `plots` (the PNGs). The initialiser imports none of them.
"""
