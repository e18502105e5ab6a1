"""Evaluation: selection baselines, the benchmark of methods x candidates, its statistics and HTML report."""
