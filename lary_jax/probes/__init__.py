"""Probes on frozen features: the attentive classifier, regression heads."""
