"""Segment-level attribution for selective SFT of long reasoning traces.

Stages: `segsft.attribute` (integrated gradients per segment), `segsft.select`
(threshold rules -> masks), `segsft.finetune` (loss on the selected segments only).
The package is `segsft` rather than top-level folders because a top-level `select`
package would shadow Python's standard `select` module.
"""

__version__ = "0.1.0"

try:  # the config's schemas and ${segsft_selection_name:...}; hydra is absent on a bare GPU image
    from segsft.config_schema import register_configs
    from segsft.store.layout import register_resolvers

    register_resolvers()
    register_configs()
except ImportError:  # pragma: no cover
    pass
