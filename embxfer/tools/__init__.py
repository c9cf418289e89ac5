"""Tools beside the library: the demo, the cluster, benchmarks, diagrams and the
verification world. Nothing on the serving path imports them."""
