"""The sticky-cookie key of clusters whose config gives none.

Rules of this module:
- A sticky cluster without `sticky.secret` gets a random key, made once per supervisor start
  and written into the config snapshot before any worker gets it, so every worker (in this
  process or a child, which reads the snapshot on its standard input) signs and honours the
  same cookies. Such cookies do not survive a restart; `bascule check` warns about it.
- The key never derives from the config (a cluster's name is public: a key made from it lets
  anyone forge a cookie for any endpoint).
"""

from __future__ import annotations

import secrets

from bascule.config.schema import Config


def new_secret() -> str:
    return secrets.token_hex(32)


def unkeyed_sticky(config: Config) -> list[int]:
    """Indexes of the sticky clusters that have no `sticky.secret`."""
    return [
        i for i, c in enumerate(config.clusters) if c.sticky is not None and not c.sticky.secret
    ]


def with_sticky_secret(config: Config, secret: str) -> Config:
    """`config` with `secret` as the key of every sticky cluster that has none."""
    unkeyed = unkeyed_sticky(config)
    if not unkeyed:
        return config
    clusters = list(config.clusters)
    for i in unkeyed:
        cluster = clusters[i]
        assert cluster.sticky is not None
        sticky = cluster.sticky.model_copy(update={"secret": secret})
        clusters[i] = cluster.model_copy(update={"sticky": sticky})
    return config.model_copy(update={"clusters": clusters})
