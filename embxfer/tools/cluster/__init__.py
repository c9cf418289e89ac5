"""embxfer as it is deployed: the encoder and each language rank in their own process.

``launcher.Cluster`` starts and owns the worker processes (``worker.worker_main``), which
talk to each other over ZeroMQ and Mooncake and to the parent over one pipe each
(``messages``); ``demo.run_processes`` drives a cluster through the demo's requests and
faults. With ``--hosts netns`` each process runs on a host of its own: a network
namespace of a ``netns.Testbed``, assigned by ``hosts``; ``partition`` cuts one off and
heals it, ``fuzzer`` floods the encoder from a host of its own, ``spoofer`` sends aborts
in other engines' names, ``keys`` makes each engine's CURVE keys for a run.
"""
