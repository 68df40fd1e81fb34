"""The HTTP routers of the server (`engine.http_app` assembles them)."""
