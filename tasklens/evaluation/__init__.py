"""Measuring a model on a task: per-prompt metrics (`metrics`), exact match and greedy
decoding (`evaluate`), and keeping the facts a model knows (`known`)."""
