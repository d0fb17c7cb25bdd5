"""Fails at import, as a typo in a user's module would."""

raise RuntimeError("this module is broken on purpose")
