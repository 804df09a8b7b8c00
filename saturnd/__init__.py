"""saturnd: a per-user cron daemon (see DESIGN.md for the layout)."""
