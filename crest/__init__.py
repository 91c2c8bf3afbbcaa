"""crest: CREST mini-batch coreset selection as a service.

The parts install as one package: ``crest.client`` (trainer side), ``crest.service``
(coordinator and job state), ``crest.worker`` (selection kernels), ``crest.bench``
(benchmarks). ``crest.embedded`` wires them together in one process.
"""

__version__ = "0.1.0"
