"""Small helpers every layer may use: the error tree, the loggers, background tasks, metrics. Must not: import a capability."""
