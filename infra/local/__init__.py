"""Local-development tooling: the stack (SeaweedFS + MLflow), synthetic data, the demo.

Nothing in components/, serving/ or pipelines/ imports this package; the component images do not ship it.
"""
