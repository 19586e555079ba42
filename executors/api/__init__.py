"""The API of tenant backends and their credentials (tenant admins only)."""
