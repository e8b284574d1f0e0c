"""Email-first conversation gateway for small studios."""
