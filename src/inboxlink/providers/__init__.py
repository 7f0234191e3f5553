"""inboxlink."""
