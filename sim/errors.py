class ScenarioError(ValueError):
    """A scenario file or sweep is invalid; the message names the field."""
