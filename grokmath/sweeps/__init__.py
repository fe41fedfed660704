"""Sweeps: grids of settings x seeds as ordinary run folders, their results, Ray."""
