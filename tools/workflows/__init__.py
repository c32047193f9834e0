"""Builders of the shipped example workflows (example_workflows/*.json)."""
