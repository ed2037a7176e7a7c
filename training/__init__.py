"""Offline training of descriptor networks (installed as ``vl_attention.training``).

* :mod:`.datasets`: generated place-recognition / pose sets from the synthetic world;
* :mod:`.mining`: in-batch triplet mining (batch-hard, random);
* :mod:`.losses`: the LOSSES registry (triplet, haf, pose);
* :mod:`.trainer`: ``train_steps`` and the held-out Recall@1 / pose evaluation.

Recipes, dataset adapters and the ``vl-attention train`` command come with the training issue.
"""
