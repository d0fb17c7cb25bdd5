"""The same jobs for every system: one app module per system, the job bodies in ``common``."""
