"""pagoPA: Node SOAP (zeep) and REST (GPD, ACA, FdR, receipts, Checkout) via httpx."""
