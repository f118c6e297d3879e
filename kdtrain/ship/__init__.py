"""The ship wing: from a sweep to a shipped student: registering picked students in the MLflow Model Registry
and making a finished study's student the next round's teacher."""
