"""The comment service's HTTP API, by area: accounts, comments, reactions, moderation,
streams, and the misc pages (viewer page, health, the OpenAPI document).

Each area module holds its handlers, their request and response models and the
routes (``route.Route``) that add them to the app and describe them in the
document. Handlers reach the services through ``context``'s keys, never the server.
"""
