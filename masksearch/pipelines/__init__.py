"""Orchestration above training and eval: multi-stage recipes (``masksearch pipeline``)."""
