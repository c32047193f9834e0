"""Maintainer tools: golden makers (tools.goldens), example-workflow builders (tools.workflows) and
reports. Run from the repository root as modules, e.g. ``python -m tools.workflows.general``."""
