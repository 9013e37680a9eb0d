"""The analytics API (`/analytics/v1/…`): usage and reliability from the lake's rollups, export jobs, freshness."""
