"""Where a request goes: the registry snapshot, endpoint health and vLLM load, the balancer."""
