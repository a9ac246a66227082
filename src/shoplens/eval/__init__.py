"""Evaluation: ``shoplens eval`` (metrics, HTML report) and test material a program can make (negatives)."""
