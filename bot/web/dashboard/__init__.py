"""The web dashboard (SPEC §9, issue 15): server-rendered pages at ``/`` (Jinja templates, htmx and
its SSE extension), a client of the control plane's read models (``bot.control.queries``) and
of the same command path the API and comment commands use (``control_commands`` rows decided by
the worker). ``bot.web.dashboard.routes.dashboard_router`` builds the routes."""
