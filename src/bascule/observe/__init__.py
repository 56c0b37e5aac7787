"""What bascule tells about itself: the access log, the event log (later metrics, tracing).

Rules of this package:
- Imported by the data plane (l7, listen, upstream), so it imports only config and codec.
"""
