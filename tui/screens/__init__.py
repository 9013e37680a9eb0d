"""One screen per module: overview, registry, rollouts, usage, orgs."""
