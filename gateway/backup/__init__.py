"""Backups and restores: a consistent snapshot of the database in a checksummed archive,
the schedule that takes them, and the restore that replays the deletion log since."""
