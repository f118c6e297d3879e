"""The sweep wing: workers that ask, train and tell (one per process), the no-teacher baselines, the
follow-up work a finished trial leaves, local worker processes and what a person watches meanwhile."""
