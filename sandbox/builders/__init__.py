"""Pure, deterministic writers of what the sandbox hands out: reporting flows and treasury journals."""

from sandbox.builders.reporting import (
    FlowPayment,
    FlowSpec,
    FlowSpecError,
    FlowValidationError,
    build_flow_json,
    build_flow_xml,
    flow_header_json,
    flow_list_item_json,
    flow_totals,
    payment_to_json,
    validate_flow_xml,
)
from sandbox.builders.treasury import (
    Credit,
    JournalFormat,
    JournalSpecError,
    JournalValidationError,
    build_journal,
    journal_filename,
    validate_journal,
)

__all__ = [
    "Credit",
    "FlowPayment",
    "FlowSpec",
    "FlowSpecError",
    "FlowValidationError",
    "JournalFormat",
    "JournalSpecError",
    "JournalValidationError",
    "build_flow_json",
    "build_flow_xml",
    "build_journal",
    "flow_header_json",
    "flow_list_item_json",
    "flow_totals",
    "journal_filename",
    "payment_to_json",
    "validate_flow_xml",
    "validate_journal",
]
