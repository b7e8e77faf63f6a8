"""Model packages: ``shipyard.yaml`` and turning a MODEL argument into a servable source."""
