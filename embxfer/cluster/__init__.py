"""embxfer as it is deployed: the encoder and each language rank in their own process.

``launcher.Cluster`` starts and owns the worker processes (``worker.worker_main``), which
talk to each other over ZeroMQ and Mooncake and to the parent over one pipe each
(``messages``); ``demo.run_processes`` drives a cluster through the demo's requests and
faults.
"""
