"""Settings of upstream's protocol that the probes use and the report checks.

Plain numbers, no JAX: the report compares a run's recorded settings with
these without loading the probes.
"""

# Upstream's five attentive probes on classification: (learning rate, weight
# decay) of each, trained side by side.
HEADS = ((5e-3, 0.01), (3e-3, 0.1), (1e-3, 0.4), (3e-4, 0.8), (1e-4, 0.01))
