"""FastStream security object from Settings (the aiokafka side is kafka_client.py)."""

from __future__ import annotations

import ssl

from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

from worker.core.config import Settings


def broker_security(settings: Settings) -> BaseSecurity | None:
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    use_ssl = protocol in ("SSL", "SASL_SSL")
    context = ssl.create_default_context(cafile=settings.kafka_ssl_cafile) if use_ssl else None
    if protocol == "SSL":
        return BaseSecurity(ssl_context=context, use_ssl=True)
    username = settings.kafka_sasl_username or ""
    password = (
        settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else ""
    )
    mechanism = settings.kafka_sasl_mechanism or "PLAIN"
    if mechanism == "SCRAM-SHA-256":
        return SASLScram256(username, password, ssl_context=context, use_ssl=use_ssl)
    if mechanism == "SCRAM-SHA-512":
        return SASLScram512(username, password, ssl_context=context, use_ssl=use_ssl)
    return SASLPlaintext(username, password, ssl_context=context, use_ssl=use_ssl)
