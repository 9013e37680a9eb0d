"""Who is calling: API-key authentication for the data plane and the secrets it compares."""
