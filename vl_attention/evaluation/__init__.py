"""Evaluation: the field's metrics, dataset readers, reports; same Localizer as the node."""
