"""Example listeners used by config/organism.yaml and the tests."""
