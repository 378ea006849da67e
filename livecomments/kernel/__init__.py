"""The shared kernel: what every component needs and nothing above it (settings, ids,
the event model, errors, store and Redis sequencing, gRPC plumbing and TLS). It imports
no component, no coordination code and no CLI."""
