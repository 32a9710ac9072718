"""The HTTP surfaces of the platform: the GovPay-compatible REST API and the SOAP station."""
