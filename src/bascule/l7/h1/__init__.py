"""HTTP/1 on the wire for the L7 data plane: the upstream connection (client.py).

Rules of this package:
- Bytes are parsed and framed by bascule's own codec (bascule.codec.http1), never by llhttp.
"""
