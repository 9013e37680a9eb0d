"""What the gateway tells operators: Prometheus metrics and logs."""
