"""Offline training of descriptor networks (installed as ``vl_attention.training``).

* :mod:`.config`: the recipe (``config/training/*.yaml``) as frozen dataclasses;
* :mod:`.sources`: dataset adapters behind one interface (``PlaceDataset``);
* :mod:`.sampling`: ground truth, distinct-place batches, cached hard negatives;
* :mod:`.augment`: photometric copies of training images;
* :mod:`.mining`, :mod:`.losses`: batch-hard / random triplets; the LOSSES registry;
* :mod:`.loop`: ``fit``, the run behind ``vl-attention train`` (checkpoints, exact resume,
  DDP, validation), with :mod:`.checkpoint`, :mod:`.distributed`, :mod:`.validation`,
  :mod:`.outputs` and the command line in :mod:`.train`;
* :mod:`.datasets`, :mod:`.trainer`: generated synthetic place sets and the short in-memory
  step loop the per-family training tests use.
"""
