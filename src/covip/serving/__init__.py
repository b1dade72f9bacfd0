"""Processes the workflow owns: model servers it starts for a job, and the lifeline that ends them."""
