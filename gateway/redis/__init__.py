"""Redis plumbing shared by the gateway: the pipelined hot-path client, key names, the change bus."""
