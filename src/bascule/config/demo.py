"""The built-in demo config: what `bascule run` serves with no config file, printed on request.

Rules of this module:
- The demo is YAML text, not a built model, so that what users see printed is exactly what
  runs, comments included, and they can copy it into a file to start their own.
- The demo's backends are in the text itself, under `demo_backends:` (started by `bascule run`
  like any config's, see `bascule.demo_backend`), so the printed demo saved to a file and run
  with `-c` works as it is; they are the endpoints of the `demo` cluster, and a test keeps the
  two in step.
- Everything listens on 127.0.0.1 only: the demo must not open the machine to its network.
"""

from __future__ import annotations

from bascule.config.loader import parse_config
from bascule.config.schema import Config

DEMO_YAML = """\
# bascule demo: one HTTP listener in front of two demo backends that bascule starts itself.
# Try:  curl -i http://127.0.0.1:8080/          (twice: the answer alternates between backends)
#       curl -i http://127.0.0.1:8080/healthz   (answered by bascule itself)
#       curl -i http://127.0.0.1:8080/old       (a redirect to /)
# Save this as bascule.yaml and edit it to start your own config; `bascule run -c bascule.yaml`
# serves it as it is, demo backends included.

# One worker, so that one round robin serves every request and the backends visibly take
# turns (each worker balances on its own; leave `workers` out for one per CPU).
workers: 1

# Demo HTTP backends that `bascule run` starts itself, each answering with what it received.
# Remove this section when your clusters point at your own servers.
demo_backends:
  - name: demo-1
    address: 127.0.0.1:9101
  - name: demo-2
    address: 127.0.0.1:9102

listeners:
  - name: web
    address: 127.0.0.1:8080
    protocol: http
    routes:
      # Routes are tried in order; the first whose match fits the request wins.
      - name: health
        match:
          path: /healthz
        direct_response:
          status: 200
          body: "ok\\n"
      - name: old-home
        match:
          path: /old
        redirect:
          path: /
          status: 302
      - name: everything-else
        match:
          path_prefix: /
        cluster: demo

clusters:
  - name: demo
    balancer: round_robin
    endpoints:
      - address: 127.0.0.1:9101
      - address: 127.0.0.1:9102
"""


def demo_config() -> Config:
    """The demo config, validated like any other config file."""
    return parse_config(DEMO_YAML, "<demo>", "yaml")
