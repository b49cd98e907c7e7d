"""Replication-level evidence: paired reruns on new seeds, pooled over replications of a protocol.

The top-k mean of one TPE run on one training seed describes how spread the good hyperparameters
are; it is not the uncertainty of a cell (two replications of one protocol moved it by 4-18 of its
own half-widths). Every comparison that decides a verdict here uses whole reruns as units:

- ``outcomes``: what one rerun of one configuration on one seed records (compact, JSON lines);
- ``pool``: choosing the configurations and seeds, running them in worker processes, the cache;
- ``paired``: the statistics (paired differences over seeds, Wilson intervals, slopes), on scipy;
- ``verdicts``: the paper's claims tested as what they say, from those statistics.
"""
