"""Offline training of descriptor networks (installed as ``vl_attention.training``).

Not implemented yet: the training issue builds recipes, datasets, mining and the trainer here.
"""
