"""The inference request path: validate, limit, forward to a pod, relay, settle, record usage."""
