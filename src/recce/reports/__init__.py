"""Reports assembled from evaluation outputs: the seed's tables (`recce tables`)."""
