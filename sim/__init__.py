"""Simulation: scenarios, engines, attacks, metrics, reports."""
