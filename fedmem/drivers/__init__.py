"""Drivers: the CLI, simulation, deployment, the centralized baseline, sweeps."""
