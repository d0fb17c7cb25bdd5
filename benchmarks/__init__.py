"""greenq beside Dramatiq and Celery on the same IO-heavy work: see ``benchmarks/README.rst``.

Run ``python -m benchmarks --help``. Nothing here is imported by greenq itself.
"""
