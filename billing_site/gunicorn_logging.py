"""gunicorn's own access log (GUNICORN_ACCESS_LOG), with the tokens of reset, invitation and checkout
links redacted like every line of ours: in the request line, the path, the referrer and any header or
environ value a custom format prints."""

from gunicorn.glogging import Logger

from billing_site.observability import redact_secrets


class RedactingLogger(Logger):
    def atoms(self, resp, req, environ, request_time) -> dict:
        atoms = super().atoms(resp, req, environ, request_time)
        return {name: redact_secrets(value) if isinstance(value, str) else value for name, value in atoms.items()}
