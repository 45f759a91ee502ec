"""Route modules; ``app.main`` includes each ``router``."""
