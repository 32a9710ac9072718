"""Templates and renderers: payment notices, receipts, reconciliation and anomaly reports."""
