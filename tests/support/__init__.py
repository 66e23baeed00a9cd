"""Helpers the tests share that are not fixtures: fake Flower grids and clients, tiny attack
models, test input files."""
