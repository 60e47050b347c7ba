"""Comparing neuron sets: evaluation matrices (`matrix`), overlap and parameter similarity
(`compare`), the papers' experiments (`experiments`), stability (`stability`), the
statistics every comparison reports (`stats`) and figures (`plots`)."""
