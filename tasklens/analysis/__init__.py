"""Comparing neuron sets: evaluation matrices (`matrix`) and the random sets every verdict compares
with (`engine`), overlap and parameter similarity (`compare`), the papers' experiments
(`experiments`), stability (`stability`), the statistics every comparison reports (`stats`) and
figures (`plots`)."""
