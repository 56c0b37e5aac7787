"""Observability: the event log (events.py); the access log and metrics are to follow here."""
