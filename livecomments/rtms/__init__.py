"""Realtime messaging server: holds viewers' SSE connections and fans events out to them."""
