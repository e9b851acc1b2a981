"""sonet: Huang, Yu, Zhang, Ma & Yao, "Adversarial robustness of stabilized neural ODE might be from obfuscated
gradients" (slides; text copy ``shared/papers/002_2e73039d38e64e01.txt``).

* :mod:`advrep.models.ode` -- the skew-symmetric ODE block and the ``sonet``, ``soblock``, ``odenet`` models (zoo);
* :mod:`advrep.sonet.workflow` -- one job per model (train, then the per-sample evaluation every table reads) and
  Tables 1-4 plus the gradient-masking diagnostics assembled from the job files;
* :mod:`advrep.sonet.grids` -- Table 4's statistics of the adaptive solver's accepted time grids.
"""
