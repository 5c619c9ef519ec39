"""Running the stages: dispatch (stages, stage_api), ranks (dist), Hydra callbacks, model
loading (models, model_source) and the generation engine shared by evaluate and generate."""
