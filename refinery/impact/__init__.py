"""Impact stage: did an approved refinement help?

Owns when a refinement shipped (reported, or inferred from traffic carrying the prompt version its
approval registered), the before/after failure rates of its cluster's region, the verdict
(`verdict.py`, pure), the refinement_impacts table and the one alert per regression. May not
decide proposals: an inferred "applied" goes through the review package's own function.
"""
