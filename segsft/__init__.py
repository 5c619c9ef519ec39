"""Segment-level attribution for selective SFT of long reasoning traces.

Three places beside the stages: `segsft.method` (the method, pure), `segsft.store` (every
file of a run), `segsft.run` (dispatch and launching). The stages of `stage=all`:
`attribute` (integrated gradients per segment), `select` (threshold rules -> masks),
`finetune` (loss on the selected segments only), `evaluate`, `report`; on their own:
`compare`, `generate`, `export`. Each stage package exposes one `STAGE` (check, run, outputs)
that gets the typed `segsft.config_schema.Settings`. The package is `segsft` rather than top-level folders because a
top-level `select` package would shadow Python's standard `select` module.
"""

__version__ = "0.1.0"

try:  # the config's schemas and ${segsft_selection_name:...}; hydra is absent on a bare GPU image
    from segsft.config_schema import register_configs
    from segsft.store.layout import register_resolvers

    register_resolvers()
    register_configs()
except ImportError:  # pragma: no cover
    pass
