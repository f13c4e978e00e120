"""Synthetic data under a microscope: the domain-gap report and the synthetic-label filter."""
