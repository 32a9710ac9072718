"""Persistence functions: keyword-only arguments, an explicit session, never a session of their own."""
