"""Signed webhooks: registering endpoints (registration.py), signing per the Standard
Webhooks spec (signing.py), the SSRF guard (ssrf.py), and the sender that works through the
outbox (sender.py)."""
