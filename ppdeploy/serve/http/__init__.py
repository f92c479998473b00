"""The HTTP front of the server: settings, the middleware, the endpoints, bodies and error responses (serve.app
composes them into the ASGI app)."""
from ppdeploy.serve.errors import BodyTooLarge
from ppdeploy.serve.http.handlers import Handlers
from ppdeploy.serve.http.middleware import ServingMiddleware
from ppdeploy.serve.http.responses import error_response, json_response
from ppdeploy.serve.http.settings import ServerSettings, settings_from_env

__all__ = ["BodyTooLarge", "Handlers", "ServerSettings", "ServingMiddleware", "error_response", "json_response",
           "settings_from_env"]
