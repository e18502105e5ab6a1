"""The DIET HTTP service: API routes, the registry (SQL) and blob storage."""
