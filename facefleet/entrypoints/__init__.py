"""facefleet's entry points: the layer above the engine, the pipeline and the benchmarks (nothing
below imports from here). Today the command line (:mod:`facefleet.entrypoints.cli`); later a service."""
