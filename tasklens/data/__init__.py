"""Plain results every layer above passes around: neuron scores and sets (`neurons`) and
their provenance (`provenance`)."""
