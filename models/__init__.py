"""Data only: SQLModel tables and enums, the engine and session, settings and schema migrations."""
