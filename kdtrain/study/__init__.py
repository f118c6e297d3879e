"""The study wing, the Optuna side: storage (and surviving a database outage), studies, the search space,
asking and telling, the first trials, recovery of dead workers' trials, and the study's progress arithmetic."""
