"""The run engine: config and events, the one resume plan, driver, workers, status, submit."""
