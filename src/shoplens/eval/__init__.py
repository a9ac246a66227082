"""Evaluation helpers: test material a program can make, quality reports."""
