"""Listeners: where clients arrive, how many may stay, and which session serves them.

Rules of this module:
- A listener owns its listening socket's accept loop, so it decides when to accept: never past
  `limits.max_connections`, and never by accepting then resetting.
- Sessions live in l7 (later l4); they reach their listener only through the small registry
  interface their context declares, so dependencies point listen → l7, never back.
"""
