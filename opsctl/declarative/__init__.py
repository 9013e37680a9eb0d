"""Declarative configuration: the fleet's orgs, users, keys, budgets and registry as YAML files in git,
read (`schema`), compared with the gateway (`state`, `plan`), applied (`apply`), exported and reconciled.
"""
