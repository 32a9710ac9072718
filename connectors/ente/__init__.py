"""The EC's own applications: receipt notifications over HTTP."""
