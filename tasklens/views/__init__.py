"""Looking at single neurons: the tokens their weights promote (`vocab`), the contexts that
activate them most (`contexts`), and pages that put a neuron's evidence together (`page`)."""
