"""HTTP resources, one blueprint per concern."""
