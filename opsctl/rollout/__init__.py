"""Rollouts: playbooks (what to do), the engine (doing it, resumably), analysis (gates) and progress display.

Nothing heavy is imported here: `opsctl` commands import the submodules they need inside the command function.
"""
