"""Simulators of the mail providers inboxlink talks to, for tests and local runs without network.

* :mod:`inboxlink_sim.google` -- Google OAuth 2.0/OpenID Connect and the Gmail API v1
  (``python -m inboxlink_sim google --port P``).
"""
