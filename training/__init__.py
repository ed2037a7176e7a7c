"""Offline training of descriptor networks (installed as ``vl_attention.training``).

* :mod:`.config`: the recipe (``config/training/*.yaml``) as frozen dataclasses;
* :mod:`.sources`: dataset adapters behind one interface (``PlaceDataset``);
* :mod:`.sampling`: ground truth, distinct-place batches, cached hard negatives;
* :mod:`.augment`: photometric copies of training images;
* :mod:`.mining`, :mod:`.losses`: batch-hard / random triplets; the LOSSES registry;
* :mod:`.loop`: ``fit``, the one training loop (``vl-attention train``, the tests and the
  benchmarks; checkpoints, exact resume, DDP, validation), with :mod:`.trainable` (the
  optimiser, frozen parts in eval mode, the frozen-trunk feature cache), :mod:`.checkpoint`,
  :mod:`.distributed`, :mod:`.validation`, :mod:`.outputs` and the command line in
  :mod:`.train`;
* :mod:`.datasets`: generated synthetic place and pose sets (the ``synthetic`` source).
"""
