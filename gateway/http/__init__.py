"""The shared edge: request authentication and reading, responses, the middleware, OpenAPI, cross-cutting keys."""
