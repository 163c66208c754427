"""The dashboard: keysvc's web pages for people (API Keys, create, revoke, roll, edit, audit).

A Starlette application rendering Jinja2 pages, with its own sign-in (a users file of names,
argon2id password hashes and the accounts each may see). It talks to keysvc only through
keysvc_client, as an admin caller acting on behalf of the signed-in user, so it imports no
other part of this package (an import-linter contract in pyproject.toml holds it to that).
"""
