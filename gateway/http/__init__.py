"""The HTTP edge: server processes, the error middleware, status endpoints and the OpenAPI document."""
