"""nodes-import: bulk-imports user nodes into PostgreSQL through COPY."""

__version__ = "0.1.0"
