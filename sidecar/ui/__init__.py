"""The dashboard at ``/ui``: figures from the sidecar's own counters, recent decisions, a login
form when a token is set (docs/observability.md, "Dashboard")."""
