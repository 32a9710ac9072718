"""Pure business rules with no I/O: identifiers, validation, state machines, parsing, matching."""
