"""The HTTP routers of the server (`engine.http.app` assembles them)."""
