"""The local dashboard (docs/dashboard.md): server-rendered pages over the store, clips and reviews.

- ``server``: checks (loopback or a password file), the app, uvicorn in the
  foreground (``python -m edge web``, ``edge/cli/web.py``); ``service``: the
  same as a daemon service (``web.enabled``, with the live health numbers).
- ``app``: the Starlette application (routes, access guard, error pages);
  ``pages`` the read-only pages, ``forms`` login, review, clip and spectrogram.
- ``queries``: every SQL query, keyset paging, the dashboard's own indexes and
  ``web_hourly`` (migrations in ``aux_schema``); ``params`` checks query
  parameters (a ``BadRequest`` is a 400 page with the reason).
- ``charts`` inline SVG; ``spectrogram`` + ``png`` the clip's PNG through
  the project's front-end; ``modelinfo`` the bundle manifest and model state;
  ``sysinfo`` /proc figures; ``auth`` password file, sessions, CSRF;
  ``context`` what it all needs from the configuration; ``listen`` HOST:PORT.
- ``templates/`` (Jinja2) and ``static/`` (CSS, the theme script): files of
  the package, nothing from a CDN.

Memory: the standalone process must stay under 60 MB, so nothing here
imports numpy at module level (``spectrogram`` draws in a child process
unless numpy is already loaded) and ``server`` avoids ``edge.types``.

Imports from edge: contract, types, clock, heap, procstat, config, sources, outputs.
"""
