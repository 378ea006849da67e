"""Stateless dispatcher replicas: forward each event once to each RTMS node hosting its video."""
