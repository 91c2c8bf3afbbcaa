"""crest: CREST mini-batch coreset selection as a service.

The parts install as one package: ``crest.client`` (trainer side), ``crest.service``
(coordinator and job state), ``crest.worker`` (selection kernels). ``crest.embedded`` wires
them together in one process; ``crest.workloads`` and ``crest.compare`` are the demo's data,
model and comparison. ``crest.bench`` (benchmarks) depends on all of them and nothing
depends on it.
"""

__version__ = "0.1.0"
