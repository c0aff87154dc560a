"""drivesim.metrics: Fréchet statistics, FVD / FID with user-supplied weights, oracle metrics.

- ``frechet``: streamed float64 moments (``FeatureStats``) and ``frechet_distance``
- ``extractors``: TorchScript I3D / Inception loading, recognised by SHA-256;
  ``I3DFeatures`` / ``InceptionFeatures``
- ``fvd`` (``FrechetVideoDistance``, a torchmetrics Metric), ``fid`` (torchmetrics FID glue)
- ``protocol`` (``EvalProtocol``), ``sampling`` (which frames become FVD clips), ``sources``
  (``VideoSource``, ``list_sources``), ``degrade`` (blurred / noisy / shuffled copies)
- ``c2st``: the classifier two-sample test, a realism metric that needs no weights
- ``oracle``: world-trained segmenter + day/night threshold, box fidelity, temporal consistency
- ``ego_oracle``: world-trained ego speed / yaw-rate estimator from consecutive frames
- ``evaluate`` (``evaluate_videos``, ``Evaluator``, ``flat_metrics``), ``summaries`` (result
  groups with the real clips' level), ``report``, ``plots``
- ``cli``: the ``drivesim eval`` tool. See docs/evaluation.md.
"""
