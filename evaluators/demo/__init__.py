"""The demo's tiny pool and synthetic tasks."""
