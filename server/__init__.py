"""latentserve's HTTP layer: config, CLI, app, scheduler, engine backends and metrics."""
