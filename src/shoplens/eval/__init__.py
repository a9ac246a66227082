"""Evaluation: ``shoplens eval`` metrics and its HTML report."""
