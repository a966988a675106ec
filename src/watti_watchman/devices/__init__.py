"""Built-in device types: one module per type, each registering itself with `watti_watchman.registry`.

Every module in this package is imported when the registry is first used; adding a type means
adding a module here (plus its docs page and tests), nothing else.
"""
