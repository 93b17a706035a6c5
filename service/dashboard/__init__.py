"""The web dashboard: server-rendered pages over the /v1 API and one plain JS file drawing SVG.

No build step, no CDN, no npm: the templates and static files ship as package data and work
offline. ``create_app`` mounts it: the studies list at ``/``, a study at ``/studies/{key}``,
the assets at ``/static``. Every number on the pages is read from the public /v1 routes by the
browser, so the dashboard shows exactly what the API shows."""

from service.dashboard.routes import STATIC_DIR, router

__all__ = ["STATIC_DIR", "router"]
