"""The models: MITP and its variants, PMF, the kinds and their layer rules, frozen backbones, trained-model folders, inference and metrics."""
