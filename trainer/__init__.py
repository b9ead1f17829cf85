"""Fits and evaluates each dataset's classifier head from its reports (JetStream consumer)."""
