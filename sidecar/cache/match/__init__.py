"""What may be served: the rule checks, their word lists, the learned pair scores."""
