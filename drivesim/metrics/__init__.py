"""drivesim.metrics: Fréchet statistics, FVD / FID with user-supplied weights, oracle metrics.

- ``frechet``: streamed float64 moments (``FeatureStats``) and ``frechet_distance``
- ``extractors``: TorchScript I3D / Inception loading, ``I3DFeatures`` / ``InceptionFeatures``
- ``fvd`` (``FrechetVideoDistance``, a torchmetrics Metric), ``fid`` (torchmetrics FID glue)
- ``protocol`` (``EvalProtocol``), ``sources`` (``VideoSource``, ``list_sources``)
- ``oracle``: world-trained segmenter + day/night threshold, box fidelity, temporal consistency
- ``evaluate`` (``evaluate_videos``, ``Evaluator``, ``flat_metrics``), ``report``, ``plots``
- ``cli``: the ``drivesim eval`` tool. See docs/evaluation.md.
"""
