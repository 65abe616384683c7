"""The tenant admin's dashboard (pt-BR): server-rendered pages at ``/dashboard`` over the same application
services as the JSON API. See :mod:`billing.dashboard.security` for sessions, CSRF and roles."""
