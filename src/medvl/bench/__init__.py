"""Bench: run a suite of models x tasks x datasets x seeds, cache each result, render a report."""
