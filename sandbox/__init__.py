"""A local pagoPA: GPD/ACA, a paying PSP, receipts, FdR, legacy RPT/RT, Checkout and treasury journals.

Helpers building the sandbox: the shared contract (the "SANDBOX_CONTRACT_PLACEHOLDER" of your instructions)
is in sandbox/CONTRACT.md; read it before anything else.
"""
