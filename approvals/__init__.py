"""Human gates and their decisions."""
