"""Looking at single neurons: the tokens their weights promote (`vocab`), the contexts that
activate them most (`contexts`), and pages that put a neuron's evidence together (`page`)."""

from tasklens.views.contexts import TopContexts, top_contexts
from tasklens.views.page import NeuronPage, neuron_pages, parse_neuron
from tasklens.views.vocab import NeuronVocab, decode_neurons

__all__ = [
    "NeuronPage",
    "NeuronVocab",
    "TopContexts",
    "decode_neurons",
    "neuron_pages",
    "parse_neuron",
    "top_contexts",
]
