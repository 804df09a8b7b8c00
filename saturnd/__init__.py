"""saturnd: a per-user cron daemon (the package of both programs' shared code)."""

__version__ = "0.3.0"
