"""A planner with sub-agents (see README.md): ``python -m examples.subagents.subagents``."""
