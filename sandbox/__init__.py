"""A local pagoPA: GPD/ACA, a paying PSP, receipts, FdR, legacy RPT/RT, Checkout and treasury journals.

A separate actor: it shares no tables or code paths with the platform (it reads only the specs path from
models.settings and parses XML with rules.xmlsafe). See sandbox/README.md.
"""
