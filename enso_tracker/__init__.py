"""enso-tracker."""
